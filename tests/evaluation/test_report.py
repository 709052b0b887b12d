from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from leukoscope.data.preprocess import UNSCALED, ScaleEstimate
from leukoscope.evaluation.metrics import classification_metrics
from leukoscope.evaluation.report import classification_table, markdown_report, write_report
from leukoscope.evaluation.timing import measure_inference


@pytest.fixture
def metrics() -> dict[str, object]:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2])
    m = classification_metrics(y_true, y_pred, ("basophil", "eosinophil", "lymphocyte"))
    m.update(model="runs/x", data="somewhere", skipped=[{"path": "a.jpg", "reason": "empty"}])
    return m


def test_table_follows_classification_report(metrics: dict[str, object]) -> None:
    lines = classification_table(metrics).splitlines()
    assert lines[0] == "| class | precision | recall | f1-score | support |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "basophil",
        "eosinophil",
        "lymphocyte",
        "accuracy",
        "macro avg",
        "weighted avg",
    ]
    assert lines[2] == "| basophil | 1.0000 | 0.6667 | 0.8000 | 3 |"
    assert lines[5] == "| accuracy | | | 0.8333 | 6 |"


def test_write_report_writes_json_markdown_and_png(
    metrics: dict[str, object], tmp_path: Path
) -> None:
    write_report(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    report = (tmp_path / "report.md").read_text()
    assert "| macro avg |" in report and "a.jpg" in report and "95% CI" in report
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "metrics.json", "report.md"]


def test_the_report_says_what_computed_and_which_images_the_views_were_averaged_for(
    metrics: dict[str, object],
) -> None:
    every = markdown_report(metrics | {"test_time_views": 4})
    phrase = "predictions by the torch backend in fp32, averaged over 4 turned views of each image"
    assert phrase + "\n" in every
    bf16 = markdown_report(metrics | {"backend": "openvino", "precision": "bf16"})
    assert "predictions by the openvino backend in bf16\n" in bf16
    unsure = markdown_report(metrics | {"test_time_views": 4, "extra_views_below": 0.98})
    assert "of each image whose first view's calibrated confidence is below 0.98" in unsure
    assert "turned views" not in markdown_report(metrics | {"test_time_views": 1})


def test_the_report_says_how_the_images_were_rescaled_and_renormalised_as_one_sample(
    metrics: dict[str, object],
) -> None:
    as_they_are = markdown_report(
        metrics | {"magnification": UNSCALED.to_dict(), "renormalised_cells": 0}
    )
    assert "Magnification" not in as_they_are and "enormalised" not in as_they_are
    scale = ScaleEstimate(factor=1.3, measured=1.3, cells=40).to_dict()
    shifted = markdown_report(metrics | {"magnification": scale, "renormalised_cells": 256})
    assert f"**Magnification:** {scale['message']}." in shifted
    assert "so the model was renormalised on 256 of them and scored so" in shifted
    failed = " ".join(markdown_report(metrics | {"not_renormalised": "a.jpg changed"}).split())
    assert (
        "**Not renormalised:** the images looked unlike the training data, but a.jpg changed; "
        "the model was scored as it is."
    ) in failed


def test_timing_reports_latency_throughput_and_machine() -> None:
    class Pixels(nn.Module):  # uint8 NHWC in, like PixelModel
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (32, 32, 3)
            return pixels.float().mean(dim=(1, 2))

    timing = measure_inference(
        Pixels(), 32, torch.device("cpu"), latency_runs=3, throughput_batch=4, throughput_runs=1
    )
    assert timing["batch1_ms_median"] > 0 and timing["throughput_images_per_s"] > 0
    assert timing["machine"]["device"] == "cpu" and timing["machine"]["torch"] == torch.__version__
    assert timing["machine"]["cpu_cores"] >= 1
