"""Classifying the white cells of field images: boxes, edge flags and unreadable fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.cells import crops
from leukoscope.cells.crops import field_cells
from leukoscope.inference.fields import (
    EDGE_NOTE,
    FieldPrediction,
    classify_cells,
    classify_field_paths,
    field_cuts,
    field_shift,
)
from leukoscope.inference.predictor import Prediction, Predictor
from tests.cells.drawing import smear

CELLS = [(200, 150, 90), (520, 300, 110), (980, 300, 100)]
"""Three white cells, the last cut by the right edge of a 1000-px-wide field."""


def test_every_cell_is_classified_with_its_field_and_box(tmp_path: Path, untrained: Path) -> None:
    predictor = Predictor.load(untrained)
    Image.fromarray(smear((1000, 560), CELLS, red_cells=40, red_diameter=60)).save(
        tmp_path / "a.png"
    )
    Image.fromarray(smear((640, 400), [(-300, -300, 60)], red_cells=20)).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.jpg")]
    progress: list[int] = []
    results = classify_field_paths(predictor, paths, on_progress=progress.append)
    assert progress == [1, 1, 1]
    cells = [r for r in results if r.prediction.error is None]
    assert len(cells) == 3 and {r.prediction.source for r in cells} == {str(paths[0])}
    for result in cells:
        assert result.box is not None and result.prediction.label in predictor.classes
        assert result.prediction.uncertain == result.box.edge
        assert (result.prediction.note == EDGE_NOTE) == result.box.edge
    assert sum(r.box.edge for r in cells if r.box) == 1
    (broken,) = [r for r in results if r.prediction.error]
    assert broken.box is None and broken.prediction.source == str(paths[2])


def test_a_second_pass_at_the_first_ones_cuts_classifies_the_same_cells_without_locating(
    tmp_path: Path, untrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = Predictor.load(untrained)
    Image.fromarray(smear((1000, 560), CELLS, red_cells=40, red_diameter=60)).save(
        tmp_path / "a.png"
    )
    Image.fromarray(smear((640, 400), CELLS[:1], red_cells=20)).save(tmp_path / "b.png")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    first = classify_field_paths(predictor, paths)
    cuts = field_cuts(first)
    assert {name: len(c.boxes) for name, c in cuts.items()} == {str(paths[0]): 3, str(paths[1]): 1}
    assert all(c.side > 0 for c in cuts.values())

    located: list[object] = []
    real = crops.locate_field
    monkeypatch.setattr(crops, "locate_field", lambda rgb: located.append(rgb) or real(rgb))
    again = classify_field_paths(predictor, [*paths, tmp_path / "a.png"], cuts=cuts)
    assert located == []
    assert [(r.box, r.side, r.prediction.probabilities) for r in again[:4]] == [
        (r.box, r.side, r.prediction.probabilities) for r in first
    ]
    Image.fromarray(smear((640, 400), CELLS[:1], red_cells=20)).save(tmp_path / "new.png")
    classify_field_paths(predictor, [tmp_path / "new.png"], cuts=cuts)  # not in cuts: located
    assert len(located) == 1


def test_a_cell_classified_from_its_crop_gets_the_same_call_as_the_crop_itself(
    untrained: Path,
) -> None:
    predictor = Predictor.load(untrained)
    found = field_cells(smear((1000, 560), CELLS[:2], red_cells=40, red_diameter=60))
    results = classify_cells(predictor, found, "field.png")
    direct = predictor.predict_images([Image.fromarray(c.rgb) for c in found], ["x", "y"])
    for result, alone in zip(results, direct, strict=True):
        assert result.prediction.probabilities == alone.probabilities
    assert classify_cells(predictor, [], "field.png") == []


def test_the_shift_check_ignores_cells_flagged_only_for_the_edge(untrained: Path) -> None:
    predictor = Predictor.load(untrained)
    found = field_cells(smear((1000, 560), CELLS, red_cells=40, red_diameter=60))
    results = classify_cells(predictor, found, "field.png")
    seen: list[list[Prediction]] = []

    def check(predictions: list[Prediction], on_edge: list[bool]) -> None:
        seen.append([p for p, edge in zip(predictions, on_edge, strict=True) if not edge])

    predictor.check_shift = check  # type: ignore[method-assign,assignment]
    field_shift(predictor, [*results, FieldPrediction(predictor.error_prediction("x", "bad"))])
    # Two cells off the edge, and the unreadable field (Predictor.check_shift leaves it out).
    assert len(seen[0]) == 3 and not any(p.note == EDGE_NOTE for p in seen[0])
    assert np.isclose(sum(seen[0][0].probabilities.values()), 1)
