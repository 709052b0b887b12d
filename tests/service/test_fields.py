"""Field images in the web app: every white cell becomes a reviewable cell with its crop and
box, and a cell seen again in an overlapping field is counted once."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from leukoscope.service.app import create_app
from leukoscope.service.settings import Settings
from tests.cells.drawing import smear
from tests.cells.test_overlap import SMEAR
from tests.service.conftest import ExpectingFivePercent, FlagLowConfidence, files
from tests.service.test_api import assert_error

LEFT = SMEAR[:700, :1000]
"""Holds the cells at (300, 300) and (700, 450)."""
RIGHT = SMEAR[150:850, 550:1550]
"""Overlaps LEFT by 450 x 550 px: holds the cell at (700, 450) again, and the two on the right."""


def jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def fields_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_file_bytes=2_000_000, max_request_bytes=8_000_000)


def test_each_cell_of_a_field_is_stored_with_its_crop_and_box(
    make_client: Callable[..., TestClient],
) -> None:
    client = fields_client(make_client)
    sample = client.post("/api/samples", json={"name": "fields"}).json()
    response = client.post(
        f"/api/samples/{sample['id']}/fields",
        files=files(("left.jpg", jpeg(LEFT)), ("broken.jpg", b"not an image")),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    (field,) = body["fields"]
    assert (field["original_name"], field["width"], field["height"]) == ("left.jpg", 1000, 700)
    assert [r["name"] for r in body["rejected"]] == ["broken.jpg"]
    cells = sorted(body["added"], key=lambda c: c["x_min"])
    assert len(cells) == 2 and all(c["field_id"] == field["id"] for c in cells)
    for cell, (x, y) in zip(cells, [(300, 300), (700, 450)], strict=True):
        assert cell["x_min"] < x < cell["x_max"] and cell["y_min"] < y < cell["y_max"]
        assert cell["edge"] is False and cell["original_name"].startswith("left.jpg cell ")
        crop = Image.open(io.BytesIO(client.get(f"/api/cells/{cell['id']}/image").content))
        assert crop.format == "PNG" and crop.width == crop.height == cell["width"]
    image = client.get(f"/api/fields/{field['id']}/image")
    assert image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (1000, 700)
    detail = client.get(f"/api/samples/{sample['id']}").json()
    assert [f["id"] for f in detail["fields"]] == [field["id"]] and len(detail["cells"]) == 2
    assert_error(client.get("/api/fields/nope/image"), 404, "no field")


def test_a_cell_in_overlapping_fields_is_counted_once_and_a_lookalike_is_flagged(
    make_client: Callable[..., TestClient],
) -> None:
    client = fields_client(make_client)
    sample = client.post("/api/samples", json={"name": "overlap"}).json()
    url = f"/api/samples/{sample['id']}/fields"
    left = client.post(url, files=files(("left.jpg", jpeg(LEFT)))).json()["added"]
    right = client.post(url, files=files(("right.jpg", jpeg(RIGHT)))).json()["added"]
    assert len(right) == 3
    (again,) = [c for c in right if c["duplicate_of"]]
    (original,) = [c for c in left if c["x_min"] > 500]  # the cell at (700, 450)
    assert again["duplicate_of"] == original["id"] and again["exclusion"] == "duplicate"
    assert not any(c["possible_duplicate_of"] for c in right)
    # A field of another place of the smear: its overlap with the others is unknown, and its
    # drawn cell looks exactly like theirs: a possible duplicate, left for the reviewer.
    elsewhere = smear((1000, 700), [(500, 350, 100)], red_cells=80, red_diameter=60, seed=9)
    (lookalike,) = client.post(url, files=files(("far.jpg", jpeg(elsewhere)))).json()["added"]
    assert lookalike["possible_duplicate_of"] in {c["id"] for c in left + right}
    assert lookalike["duplicate_of"] is None and lookalike["label"] is None
    differential = client.get(f"/api/samples/{sample['id']}").json()["differential"]
    assert differential["excluded"]["duplicate"] == 1
    table = client.get(f"/api/samples/{sample['id']}/cells.csv").text
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["field"] for r in rows] == ["left.jpg"] * 2 + ["right.jpg"] * 3 + ["far.jpg"]
    (row,) = [r for r in rows if r["cell_id"] == again["id"]]
    assert int(row["x_min"]) == again["x_min"] and row["duplicate_of"] == original["id"]
    assert sum(bool(r["possible_duplicate_of"]) for r in rows) == 1


def test_field_uploads_follow_the_upload_rules(make_client: Callable[..., TestClient]) -> None:
    client = fields_client(make_client)
    sample = client.post("/api/samples", json={"name": "rules"}).json()
    url = f"/api/samples/{sample['id']}/fields"
    assert_error(client.post(url, files=files(("a.jpg", b"not an image"))), 415)
    blank = np.full((300, 400, 3), 230, np.uint8)
    body = client.post(url, files=files(("blank.jpg", jpeg(blank)))).json()
    assert len(body["fields"]) == 1 and body["added"] == []
    assert_error(client.post("/api/samples/nope/fields", files=files(("b.jpg", jpeg(blank)))), 404)


def test_cells_on_a_fields_edge_are_left_out_of_the_shift_check(
    make_settings: Callable[..., Settings], predictor: Any
) -> None:
    # A model that flags none of these cells on its own: only the edge flags them.
    calm = ExpectingFivePercent(FlagLowConfidence(predictor.predictor, 0.0))
    settings = make_settings(max_file_bytes=2_000_000, max_request_bytes=8_000_000)
    with TestClient(create_app(settings, predictor=calm), base_url="http://127.0.0.1") as client:
        sample = client.post("/api/samples", json={"name": "edges"}).json()
        # Each field cuts through the drawn cells at its sides.
        cut = [
            ("a.jpg", jpeg(SMEAR[:600, 300:650])),
            ("b.jpg", jpeg(SMEAR[:600, 1200:])),
            ("c.jpg", jpeg(SMEAR[400:, 1100:1420])),
        ]
        response = client.post(f"/api/samples/{sample['id']}/fields", files=files(*cut))
        assert response.status_code == 200, response.text
        added = response.json()["added"]
        assert len(added) >= 3 and all(c["edge"] for c in added), added
        assert all(c["prediction"]["uncertain"] for c in added)
        shift = client.get(f"/api/samples/{sample['id']}").json()["differential"]["shift"]
        assert (shift["cells"], shift["shifted"]) == (0, False)
