"""Prediction files: CSV rows, the JSON summary and the choice of format by suffix."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest

from leukoscope.cells.fields import CellBox
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.predictor import Prediction
from leukoscope.inference.shift import ShiftCheck, check_shift
from leukoscope.reports.predictions import check_output_suffix, predictions_csv, summarise

CLASSES = ("eosinophil", "neutrophil")


def prediction(source: str, label: str, p: float, uncertain: bool = False) -> Prediction:
    other = next(c for c in CLASSES if c != label)
    return Prediction(source, label, p, {label: p, other: 1 - p}, other, 1 - p, uncertain, p)


PREDICTIONS = [
    prediction("a.jpg", "neutrophil", 0.9),
    prediction("b.jpg", "eosinophil", 0.55, uncertain=True),
    dataclasses.replace(prediction("d.jpg", "eosinophil", 0.97), fallback=True),
    Prediction("c.jpg", None, 0.0, {}, None, 0.0, False, 0.0, error="c.jpg: empty file"),
]


def test_csv_has_a_row_per_image_and_no_numbers_for_an_unreadable_one() -> None:
    rows = list(csv.DictReader(io.StringIO(predictions_csv(PREDICTIONS, CLASSES))))
    assert [r["source"] for r in rows] == ["a.jpg", "b.jpg", "d.jpg", "c.jpg"]
    assert rows[0]["p_neutrophil"] == "0.900000" and rows[0]["runner_up"] == "eosinophil"
    assert rows[1]["uncertain"] == "true"
    assert [r["fallback"] for r in rows[:3]] == ["false", "false", "true"]
    assert {k: v for k, v in rows[3].items() if v} == {
        "source": "c.jpg",
        "error": "c.jpg: empty file",
    }


def test_summary_counts_only_confident_calls_per_class() -> None:
    assert summarise(PREDICTIONS) == {
        "images": 4,
        "unreadable": 1,
        "uncertain": 1,
        "fallback": 1,
        "by_class": {"neutrophil": 1, "eosinophil": 1},
    }


@pytest.mark.parametrize("name", ["p.csv", "P.JSON"])
def test_csv_and_json_are_accepted(name: str) -> None:
    check_output_suffix(Path(name))


def test_another_suffix_is_refused_before_any_work() -> None:
    with pytest.raises(LeukoscopeError, match=r"p\.xlsx: the output must end in \.csv or \.json"):
        check_output_suffix(Path("p.xlsx"))


def test_field_cells_add_their_box_and_an_unreadable_field_leaves_it_empty() -> None:
    boxes = [
        CellBox(1, 2, 30, 40, 0.9, False),
        CellBox(0, 5, 20, 50, 0.8, True),
        CellBox(3, 3, 33, 33, 0.7, False),
        None,
    ]
    rows = list(csv.DictReader(io.StringIO(predictions_csv(PREDICTIONS, CLASSES, boxes))))
    assert [r["x_min"] for r in rows] == ["1", "0", "3", ""]
    assert [r["edge"] for r in rows] == ["0", "1", "0", ""]
    assert rows[0]["y_max"] == "40" and rows[3]["error"] == "c.jpg: empty file"
    assert "x_min" not in next(csv.DictReader(io.StringIO(predictions_csv(PREDICTIONS, CLASSES))))


def test_every_read_row_says_whether_the_sample_looks_shifted() -> None:
    def column(shift: ShiftCheck | None) -> list[str]:
        text = predictions_csv(PREDICTIONS, CLASSES, shift=shift)
        return [r["sample_shifted"] for r in csv.DictReader(io.StringIO(text))]

    assert column(check_shift([True] * 20, 0.05)) == ["true", "true", "true", ""]
    assert column(check_shift([False] * 20, 0.05)) == ["false", "false", "false", ""]
    assert column(None) == ["", "", "", ""], "a model without an abstention rule checks nothing"
