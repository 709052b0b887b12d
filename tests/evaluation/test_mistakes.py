from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.evaluation.mistakes import MISTAKES_GRID, confident_mistakes, mistake_heatmaps
from leukoscope.inference.predictor import Predictor
from tests.inference.tiny import Tiny


def test_most_confident_mistakes_come_first(tmp_path: Path, tiny: Tiny) -> None:
    predictor = Predictor.load(tiny.model_dir)
    paths = [p for p, _ in tiny.split("test")][:6]
    predictions = predictor.predict_paths(paths, workers=0)
    wrong = ["neutrophil" if p.label != "neutrophil" else "basophil" for p in predictions]
    entries = confident_mistakes(predictions, wrong, paths, n=3)
    confidences = [e["confidence"] for e in entries]
    assert len(entries) == 3 and confidences == sorted(confidences, reverse=True)
    assert max(confidences) == pytest.approx(max(p.confidence for p in predictions), abs=1e-4)
    grid = mistake_heatmaps(predictor, entries, tmp_path)
    assert grid == tmp_path / MISTAKES_GRID and grid.stat().st_size > 0
    first = Image.open(tmp_path / entries[0]["overlay"])
    assert first.size == Image.open(entries[0]["source"]).size
    assert np.all([(tmp_path / e["overlay"]).exists() for e in entries])
    right = [p.label for p in predictions]
    assert confident_mistakes(predictions, right, paths) == []
    assert mistake_heatmaps(predictor, [], tmp_path / "none") is None
