"""Renormalising a shifted sample in the web app: the model's normalisation statistics
re-estimated on the sample's stored cells, every cell classified again, and the calls kept as
a history beside the earlier ones."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from leukoscope.data.preprocess import SCALE_CELLS, SampleScale, ScaleEstimate, to_noted_pixels
from leukoscope.inference.predictor import Predictor
from leukoscope.models.card import load_card, update_card
from leukoscope.models.serialization import weights_sha256
from leukoscope.service import store
from leukoscope.service.app import create_app
from leukoscope.service.schemas import PredictionOut
from leukoscope.service.settings import Settings
from leukoscope.training.adapt import renormalise
from tests.inference.tiny import build_batchnorm
from tests.service.conftest import FlagLowConfidence, cell_jpeg, files
from tests.service.test_api import assert_error
from tests.service.test_fields import LEFT, jpeg

CELLS = 34
"""Above the 32 cells renormalising needs."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small EfficientNet (it has BatchNorm statistics), calibrated."""
    return build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir


@pytest.fixture
def make_app(
    make_settings: Callable[..., Settings], source: Path
) -> Iterator[Callable[[float], TestClient]]:
    """Apps running the model with cells under ``threshold`` confidence flagged: 1.01 flags
    every cell (a sample unlike the training data), 0 none."""
    clients: list[TestClient] = []

    def _make(threshold: float) -> TestClient:
        predictor: Any = FlagLowConfidence(Predictor.load(source, backend="torch"), threshold)
        settings = make_settings(
            model_path=source, max_files=CELLS, max_request_bytes=4_000_000,
            max_file_bytes=2_000_000,
        )  # fmt: skip
        client = TestClient(create_app(settings, predictor=predictor), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


def sample_with_cells(client: TestClient, n: int = CELLS, field: bool = True) -> str:
    sample_id: str = client.post("/api/samples", json={"name": "smear"}).json()["id"]
    cells = files(*((f"cell_{i}.jpg", cell_jpeg(i)) for i in range(n)))
    assert client.post(f"/api/samples/{sample_id}/cells", files=cells).status_code == 200
    if field:
        response = client.post(
            f"/api/samples/{sample_id}/fields", files=files(("f.jpg", jpeg(LEFT)))
        )
        assert response.status_code == 200, response.text
    return sample_id


def renormalise_sample(client: TestClient, sample_id: str, reviewer: str = "Dr. A") -> Any:
    return client.post(f"/api/samples/{sample_id}/renormalise", json={"reviewer": reviewer})


def test_renormalising_measures_the_magnification_on_every_upload_and_keeps_it(
    make_settings: Callable[..., Settings], source: Path, tmp_path: Path
) -> None:
    """Every cell is classified again at the magnification of all the uploads together,
    which the sample keeps for later uploads (in place of the one its first upload kept)."""
    scaled = tmp_path / "scaled"
    shutil.copytree(source, scaled)
    card = load_card(scaled / "model_card.json")
    sample_scale = SampleScale(0.3, cells=100)  # the synthetic cells fill about 0.6
    update_card(scaled, preprocessing=replace(card.preprocessing, sample_scale=sample_scale))
    loaded = Predictor.load(scaled, backend="torch")
    settings = make_settings(
        model_path=scaled, max_files=CELLS, max_request_bytes=4_000_000, max_file_bytes=2_000_000
    )
    app = create_app(settings, predictor=FlagLowConfidence(loaded, 1.01))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sample_id = sample_with_cells(client, field=False)
        measured = client.get(f"/api/samples/{sample_id}").json()["magnification"]
        assert measured["factor"] > 1.5 and measured["cells"] == min(CELLS, SCALE_CELLS)
        engine = store.make_engine(settings.database_url)
        with store.writer(engine).begin() as session:  # as if the first upload had said 1.2
            sample = store.get_sample(session, sample_id)
            sample.magnification = ScaleEstimate(1.2, 1.2, 8).to_dict()
        engine.dispose()
        response = renormalise_sample(client, sample_id)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["magnification"] == measured
    images = [Image.open(io.BytesIO(cell_jpeg(i))) for i in range(CELLS)]
    factor = measured["factor"]
    pixels = np.stack([to_noted_pixels(i, loaded.card.preprocessing, factor)[0] for i in images])
    expected = renormalise(loaded.model, loaded.card, torch.from_numpy(pixels))
    assert after["renormalisations"][0]["model_sha256"] == weights_sha256(expected)


def test_a_shifted_sample_is_classified_again_by_the_model_renormalised_on_its_cells(
    make_app: Callable[[float], TestClient], source: Path, make_settings: Callable[..., Settings]
) -> None:
    client = make_app(1.01)
    assert client.get("/api/model").json()["renormalisable"] is True
    sample_id = sample_with_cells(client)
    before = client.get(f"/api/samples/{sample_id}").json()
    assert len(before["cells"]) == CELLS + 2
    assert before["differential"]["shift"]["shifted"]
    assert (
        "Renormalising the model on this sample's cells"
        in (before["differential"]["shift"]["message"])
    )
    first = before["cells"][0]
    corrected = client.post(
        f"/api/cells/{first['id']}/label", json={"label": "basophil", "reviewer": "Dr. B"}
    )
    assert corrected.status_code == 200, corrected.text

    response = renormalise_sample(client, sample_id)
    assert response.status_code == 200, response.text
    after = response.json()
    (done,) = after["renormalisations"]
    assert (done["reviewer"], done["cells"]) == ("Dr. A", CELLS + 2)
    assert after["classified_since_renormalised"] == 0
    assert all(c["prediction"]["renormalisation_id"] == done["id"] for c in after["cells"])
    assert after["cells"][0]["label"] == "basophil"  # a reviewer's call stands
    # The renormalised model's own flags (not the wrapper's) now decide the initial calls.
    assert after["unidentified_count"] < before["unidentified_count"]

    # The renormalised model is the one renormalise() makes of those very cells' pixels, as
    # the predictor sees them (crops cut from the field included, stored as PNG).
    loaded = Predictor.load(source, backend="torch")
    config = loaded.card.preprocessing
    images = [
        Image.open(io.BytesIO(client.get(f"/api/cells/{c['id']}/image").content))
        for c in before["cells"]
    ]
    pixels = torch.from_numpy(np.stack([to_noted_pixels(i, config)[0] for i in images]))
    expected = renormalise(loaded.model, loaded.card, pixels)
    assert done["model_sha256"] == weights_sha256(expected)

    # Every call is kept: the upload's and the renormalised model's, with its provenance.
    engine = store.make_engine(make_settings().database_url)
    with store.session_factory(engine).begin() as session:
        rows = session.scalars(
            select(store.Prediction).where(store.Prediction.cell_id == first["id"])
        )
        assert [r.renormalisation_id for r in rows] == [None, done["id"]]
        (recorded,) = session.scalars(select(store.Renormalisation)).all()
        assert len(recorded.adaptation["files"]) == CELLS + 2
        assert recorded.adaptation["data"] == f"sample 'smear' ({sample_id})"
    engine.dispose()
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/samples/{sample_id}/cells.csv").text)))
    assert {row["predicted_by_sha256"] for row in rows} == {done["model_sha256"]}
    report = client.get(f"/api/samples/{sample_id}/report.html").text
    assert "Renormalised by Dr. A" in report and f"re-estimated on {CELLS + 2}" in report

    # Once is enough until cells are added; those are then classified by the model as loaded.
    assert_error(renormalise_sample(client, sample_id), 409, "already renormalised on all")
    added = client.post(f"/api/samples/{sample_id}/cells", files=files(("new.jpg", cell_jpeg(99))))
    assert added.json()["added"][0]["prediction"]["renormalisation_id"] is None
    detail = client.get(f"/api/samples/{sample_id}").json()
    assert detail["classified_since_renormalised"] == 1
    again = renormalise_sample(client, sample_id).json()
    assert [r["cells"] for r in again["renormalisations"]] == [CELLS + 2, CELLS + 3]
    assert again["classified_since_renormalised"] == 0

    # A signed-off sample is read-only.
    for cell in again["cells"]:
        if cell["label"] is None and cell["exclusion"] is None:
            body = {"label": cell["prediction"]["label"], "reviewer": "Dr. A"}
            assert client.post(f"/api/cells/{cell['id']}/label", json=body).status_code == 200
    signed = client.post(f"/api/samples/{sample_id}/signoff", json={"reviewer": "Dr. A"})
    assert signed.status_code == 200, signed.text
    client.post(f"/api/samples/{sample_id}/cells", files=files(("late.jpg", cell_jpeg(98))))
    assert_error(renormalise_sample(client, sample_id), 409, "signed off")


def test_renormalising_is_refused_where_it_cannot_help(
    make_app: Callable[[float], TestClient], client: TestClient
) -> None:
    """A sample like the training data, too few cells, a model without normalisation
    statistics: each refused with its reason, and nothing recorded."""
    unshifted = make_app(0.0)
    sample_id = sample_with_cells(unshifted, field=False)
    assert_error(renormalise_sample(unshifted, sample_id), 409, "does not look unlike")
    assert unshifted.get(f"/api/samples/{sample_id}").json()["renormalisations"] == []

    few = make_app(1.01)
    sample_id = sample_with_cells(few, n=10, field=False)
    assert_error(renormalise_sample(few, sample_id), 409, "fewer than 32 readable cells")
    assert_error(renormalise_sample(few, "nope"), 404, "no sample")
    response = few.post(f"/api/samples/{sample_id}/renormalise", json={})
    assert_error(response, 422, "reviewer's name is required")

    assert client.get("/api/model").json()["renormalisable"] is False  # a SqueezeNet
    sample_id = client.post("/api/samples", json={"name": "s"}).json()["id"]
    assert_error(renormalise_sample(client, sample_id), 409, "no normalisation statistics")


def test_the_migration_down_keeps_each_cells_first_call(tmp_path: Path) -> None:
    """Downgrading below renormalisations leaves one prediction per cell, the upload's."""
    _down_and_up(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_the_migration_down_keeps_each_cells_first_call_on_postgresql(postgres_url: str) -> None:
    _down_and_up(postgres_url)


def _down_and_up(url: str) -> None:
    from alembic import command

    engine = store.make_engine(url)
    store.upgrade(engine)
    call = PredictionOut(
        label="basophil", confidence=0.9, probabilities={"basophil": 0.9}, runner_up=None,
        runner_up_probability=0.1, uncertain=False,
    )  # fmt: skip
    new = store.NewCell("a.jpg", b"x", "JPEG", "0" * 64, 1, 1, call)
    with store.writer(engine).begin() as session:
        sample = store.create_sample(session, "s", ["basophil", "monocyte"], "1" * 64)
        (cell,) = store.add_cells(session, sample, [new], "1" * 64)
        renormalised = {cell.id: call.model_copy(update={"label": "monocyte"})}
        store.add_renormalisation(session, sample.id, "Dr. A", None, "2" * 64, 40, {}, renormalised)
        assert cell.label == "monocyte" and len(cell.predictions) == 2
        with pytest.raises(store.ConflictError, match="renormalised by another request"):
            store.add_renormalisation(
                session, sample.id, "Dr. B", None, "2" * 64, 40, {}, renormalised
            )
    config = store.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT cell_id, label FROM predictions").all()
    assert rows == [(cell.id, "basophil")]
    store.upgrade(engine)
    with store.session_factory(engine).begin() as session:
        assert store.get_cell(session, cell.id).label == "basophil"
    engine.dispose()
