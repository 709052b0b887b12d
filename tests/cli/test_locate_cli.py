"""The locate command: boxes of white cells in field images, bad files reported, never fatal."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from leukoscope.cli.app import app
from leukoscope.cli.locate import COLUMNS
from tests.cells.drawing import smear


def test_locate_writes_a_row_per_cell_and_reports_bad_files(tmp_path: Path) -> None:
    fields = tmp_path / "fields"
    fields.mkdir()
    cells = [(150, 150, 90), (450, 250, 100)]
    Image.fromarray(smear((640, 400), cells, red_cells=25, red_diameter=55)).save(fields / "a.png")
    Image.fromarray(smear((640, 400), [(-300, -300, 60)], red_cells=25)).save(fields / "b.png")
    (fields / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "boxes.csv"
    result = CliRunner().invoke(app, ["locate", str(fields), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    boxes = [r for r in rows if r["source"].endswith("a.png")]
    assert len(boxes) == 2
    for (x, y, _), row in zip(
        sorted(cells), sorted(boxes, key=lambda r: int(r["x_min"])), strict=True
    ):
        assert int(row["x_min"]) < x < int(row["x_max"])
        assert int(row["y_min"]) < y < int(row["y_max"])
        assert row["edge"] == "0" and 0 < float(row["score"]) <= 1 and not row["error"]
    assert not [r for r in rows if r["source"].endswith("b.png")]
    (broken,) = [r for r in rows if r["source"].endswith("broken.jpg")]
    assert "not an image" in broken["error"] and not broken["x_min"]
    assert "unreadable files" in result.output


def test_locate_refuses_other_outputs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["locate", str(tmp_path), "--out", str(tmp_path / "b.json")])
    assert result.exit_code != 0
    assert not (tmp_path / "b.json").exists()
