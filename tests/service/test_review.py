"""The review workflow on stored samples: groups, corrections, sign-off, exports, persistence."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from leukoscope.classes import WBC5
from leukoscope.cli import app as cli_app
from leukoscope.data.scan import find_class_folders
from leukoscope.service import store
from leukoscope.service.settings import Settings
from tests.service.conftest import (
    N_CELLS,
    ExpectingFivePercent,
    ReferringFlagged,
    cell_jpeg,
    cells,
    files,
)
from tests.service.test_api import assert_error


def new_sample(client: TestClient, name: str = "smear 1") -> dict:
    sample = client.post("/api/samples", json={"name": name}).json()
    response = client.post(f"/api/samples/{sample['id']}/cells", files=cells())
    assert response.status_code == 200, response.text
    return client.get(f"/api/samples/{sample['id']}").json()


def relabel(client: TestClient, cell_id: str, label: str, reviewer: str = "Dr. A") -> dict:
    response = client.post(
        f"/api/cells/{cell_id}/label", json={"label": label, "reviewer": reviewer}
    )
    assert response.status_code == 200, response.text
    return response.json()


def resolve_all(client: TestClient, sample: dict) -> dict:
    """Classify every unidentified cell as the model's guess; returns the last response."""
    result = {}
    for cell in sample["cells"]:
        if cell["label"] is None and cell["exclusion"] is None:
            result = relabel(client, cell["id"], cell["prediction"]["label"])
    return result


def test_uploaded_cells_are_stored_with_predictions(client: TestClient) -> None:
    sample = new_sample(client)
    assert sample["name"] == "smear 1" and sample["classes"] == list(WBC5)
    assert [c["original_name"] for c in sample["cells"]] == [f"cell_{i}.jpg" for i in range(8)]
    assert [c["position"] for c in sample["cells"]] == list(range(8))
    uncertain = [c for c in sample["cells"] if c["prediction"]["uncertain"]]
    assert 0 < len(uncertain) < N_CELLS, "the tiny model's threshold should flag some cells"
    assert all(c["label"] is None for c in uncertain)
    assert sample["unidentified_count"] == len(uncertain)
    differential = sample["differential"]
    assert differential["sample"] == "smear 1"
    assert differential["for_review"]["total"] == len(uncertain)
    assert differential["white_cells_counted"] == N_CELLS - len(uncertain)
    image = client.get(f"/api/cells/{sample['cells'][0]['id']}/image")
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == cell_jpeg(0)
    heatmap = client.get(f"/api/cells/{sample['cells'][0]['id']}/heatmap")
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"


def test_tiff_cells_are_shown_as_png(client: TestClient) -> None:
    sample = client.post("/api/samples", json={"name": "tiff"}).json()
    added = client.post(
        f"/api/samples/{sample['id']}/cells", files=files(("scan.tif", cell_jpeg(1, "TIFF")))
    ).json()["added"]
    image = client.get(f"/api/cells/{added[0]['id']}/image")
    assert image.headers["content-type"] == "image/png"


def test_relabel_records_the_correction_and_updates_the_differential(client: TestClient) -> None:
    sample = new_sample(client)
    cell = next(c for c in sample["cells"] if c["label"] is not None)

    def counts(differential: dict) -> dict[str, int]:
        return {row["class"]: row["count"] for row in differential["rows"]}

    before = counts(sample["differential"])
    target = next(name for name in WBC5 if name != cell["label"])
    result = relabel(client, cell["id"], target, reviewer="  Dr. B  ")
    correction = result["cell"]["corrections"][-1]
    assert (correction["from_label"], correction["to_label"]) == (cell["label"], target)
    assert correction["reviewer"] == "Dr. B"
    assert correction["created_at"].endswith(("Z", "+00:00"))
    after = counts(result["differential"])
    assert after[target] == before[target] + 1
    assert after[cell["label"]] == before[cell["label"]] - 1
    unchanged = relabel(client, cell["id"], target)
    assert len(unchanged["cell"]["corrections"]) == 1, "same label again adds no correction"
    assert unchanged["differential"]["to_confirm"] == 0, "a sample like the training data"
    assert_error(
        client.post(f"/api/cells/{cell['id']}/label", json={"label": "dragon", "reviewer": "x"}),
        422,
        "unknown class",
    )
    assert_error(
        client.post(f"/api/cells/{cell['id']}/label", json={"label": target, "reviewer": " "}),
        422,
    )
    assert_error(client.post("/api/cells/0000/label", json={"label": target, "reviewer": "x"}), 404)


def test_a_first_call_that_keeps_the_models_label_confirms_it(client: TestClient) -> None:
    sample = new_sample(client)
    cell = next(c for c in sample["cells"] if c["label"] is not None)
    assert cell["corrections"] == []
    confirmed = relabel(client, cell["id"], cell["label"], reviewer="Dr. C")
    calls = [
        (c["from_label"], c["to_label"], c["reviewer"]) for c in confirmed["cell"]["corrections"]
    ]
    assert calls == [(cell["label"], cell["label"], "Dr. C")]
    assert confirmed["cell"]["label"] == cell["label"]
    # A person vouched for it: it is among the reviewed cells.
    names = zipfile.ZipFile(io.BytesIO(client.get("/api/reviewed.zip").content)).namelist()
    assert names == [f"{cell['label']}/{cell['id']}.jpg"]


def test_a_class_group_is_confirmed_in_one_request(client: TestClient) -> None:
    sample = new_sample(client)
    sid = sample["id"]
    classified = [c for c in sample["cells"] if c["label"] is not None]
    unidentified = next(c for c in sample["cells"] if c["label"] is None)
    corrected = relabel(client, classified[0]["id"], "basophil", reviewer="Dr. B")["cell"]

    def confirm(ids: list[str]) -> Any:
        return client.post(
            f"/api/samples/{sid}/confirmations", json={"cell_ids": ids, "reviewer": "Dr. C"}
        )

    assert_error(confirm([unidentified["id"]]), 409, "no class to confirm")
    assert_error(confirm(["0000"]), 404, "no cell")
    response = confirm([c["id"] for c in classified] + [classified[1]["id"]])
    assert response.status_code == 200, response.text
    cells = {c["id"]: c for c in response.json()["cells"]}
    # The cell Dr. B corrected keeps that call; each other one is confirmed once, by Dr. C.
    assert cells[corrected["id"]]["corrections"] == corrected["corrections"]
    for cell in classified[1:]:
        (confirmation,) = cells[cell["id"]]["corrections"]
        assert confirmation["from_label"] == confirmation["to_label"] == cell["label"]
        assert confirmation["reviewer"] == "Dr. C"
    assert cells[unidentified["id"]]["corrections"] == []
    again = confirm([c["id"] for c in classified])
    assert again.json()["cells"] == response.json()["cells"], "confirming twice adds nothing"


def test_sign_off_needs_every_cell_identified_then_locks(client: TestClient) -> None:
    sample = new_sample(client)
    sid = sample["id"]
    assert_error(
        client.post(f"/api/samples/{sid}/signoff", json={"reviewer": "Dr. A"}), 409, "unidentified"
    )
    last = resolve_all(client, sample)
    assert last["unidentified_count"] == 0
    signed = client.post(f"/api/samples/{sid}/signoff", json={"reviewer": "Dr. A"}).json()
    assert signed["signoff"]["reviewer"] == "Dr. A"
    cell_id = sample["cells"][0]["id"]
    locked = client.post(f"/api/cells/{cell_id}/label", json={"label": "monocyte", "reviewer": "x"})
    assert_error(locked, 409, "read-only")
    assert_error(client.post(f"/api/samples/{sid}/cells", files=cells(1)), 409, "read-only")
    assert_error(client.post(f"/api/samples/{sid}/signoff", json={"reviewer": "x"}), 409)
    confirmed = client.post(
        f"/api/samples/{sid}/confirmations", json={"cell_ids": [cell_id], "reviewer": "x"}
    )
    assert_error(confirmed, 409, "read-only")
    listed = client.get("/api/samples").json()
    assert listed[0]["id"] == sid and listed[0]["signoff"]["reviewer"] == "Dr. A"


def test_csv_and_report(client: TestClient) -> None:
    sample = new_sample(client, name="=HYPERLINK(1)")
    resolve_all(client, sample)
    client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. <b>C</b>"})
    response = client.get(f"/api/samples/{sample['id']}/cells.csv")
    assert response.headers["content-type"].startswith("text/csv")
    disposition = response.headers["content-disposition"]
    assert 'filename="=HYPERLINK(1).csv"' in disposition, "named after the sample"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == N_CELLS
    assert rows[0]["sample_name"] == "'=HYPERLINK(1)", "formulas are neutralised"
    assert {row["signed_off_by"] for row in rows} == {"Dr. <b>C</b>"}
    assert all(row["label"] in WBC5 for row in rows)
    assert sum(row["corrected_by"] == "Dr. A" for row in rows) == sample["unidentified_count"]
    report = client.get(f"/api/samples/{sample['id']}/report.html")
    assert report.headers["content-type"].startswith("text/html")
    assert 'inline; filename="=HYPERLINK(1).html"' in report.headers["content-disposition"]
    assert "Dr. &lt;b&gt;C&lt;/b&gt;" in report.text and "<b>C</b>" not in report.text
    assert "White-cell differential: =HYPERLINK(1)</h1>" in report.text
    assert "not a diagnosis" in report.text and "<script" not in report.text


def test_unknown_sample(client: TestClient) -> None:
    assert_error(client.get("/api/samples/nope"), 404, "no sample")
    assert_error(client.get("/api/samples/nope/cells.csv"), 404)
    assert_error(client.get("/api/cells/nope/image"), 404, "no cell")
    assert_error(client.post("/api/samples", json={"name": ""}), 422)


def _restart_keeps_everything(make_client: Callable[..., TestClient], **settings: Any) -> None:
    first = make_client(**settings)
    sample = new_sample(first)
    resolve_all(first, sample)
    first.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. A"})
    expected = first.get(f"/api/samples/{sample['id']}").json()
    first.__exit__(None, None, None)  # the first server shuts down (its engine is disposed)
    second = make_client(**settings)
    assert second.get(f"/api/samples/{sample['id']}").json() == expected
    assert expected["signoff"]["reviewer"] == "Dr. A"
    assert sum(len(c["corrections"]) for c in expected["cells"]) == sample["unidentified_count"]


def test_restart_keeps_samples_corrections_and_sign_offs(
    make_client: Callable[..., TestClient],
) -> None:
    _restart_keeps_everything(make_client)


def test_restart_keeps_everything_on_postgresql(
    make_client: Callable[..., TestClient], postgres_url: str
) -> None:
    _restart_keeps_everything(make_client, db_url=postgres_url)


def _assert_migrations_match(url: str) -> None:
    engine = store.make_engine(url)
    store.upgrade(engine)
    store.upgrade(engine)  # idempotent: a restart finds the schema at head
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), store.Base.metadata) == []
    engine.dispose()


def test_migrations_match_the_models(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings.data_dir.mkdir()
    _assert_migrations_match(settings.database_url)


def test_migrations_match_the_models_on_postgresql(postgres_url: str) -> None:
    _assert_migrations_match(postgres_url)


def test_reviewed_export_as_zip_and_folder(
    client: TestClient, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    sample = new_sample(client)
    relabel(client, sample["cells"][0]["id"], "basophil")
    relabel(client, sample["cells"][1]["id"], "monocyte")
    relabel(client, sample["cells"][1]["id"], "eosinophil")
    names = zipfile.ZipFile(io.BytesIO(client.get("/api/reviewed.zip").content)).namelist()
    assert sorted(names) == sorted(
        [f"basophil/{sample['cells'][0]['id']}.jpg", f"eosinophil/{sample['cells'][1]['id']}.jpg"]
    )
    resolve_all(client, client.get(f"/api/samples/{sample['id']}").json())
    client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. A"})
    archive = zipfile.ZipFile(io.BytesIO(client.get("/api/reviewed.zip?signed_off=true").content))
    assert len(archive.namelist()) == N_CELLS
    assert archive.read(f"basophil/{sample['cells'][0]['id']}.jpg") == cell_jpeg(0)

    out = tmp_path / "reviewed"
    db_url = make_settings().database_url
    result = CliRunner().invoke(cli_app, ["review", "export", "--db", db_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    found = find_class_folders(out)  # what `data split` and `train` read
    assert set(found.folders) == {"basophil", "eosinophil"}
    assert found.unknown == [] and found.loose_files == []
    assert [p.name for p in (out / "basophil").iterdir()] == [f"{sample['cells'][0]['id']}.jpg"]
    again = CliRunner().invoke(cli_app, ["review", "export", "--db", db_url, "--out", str(out)])
    assert again.exit_code != 0 and "new or empty folder" in str(again.exception)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "lab-server"])
def test_refuses_to_listen_beyond_loopback_without_token(
    make_settings: Callable[..., Settings], host: str
) -> None:
    with pytest.raises(ValueError, match="without an API token"):
        make_settings(host=host)
    assert make_settings(host=host, token="x" * 16).token == "x" * 16
    with pytest.raises(ValueError, match="at least 16"):
        make_settings(token="short")
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--host", host])
    assert result.exit_code != 0 and "without an API token" in str(result.exception)


def test_cells_classified_by_another_model_do_not_mix(client: TestClient) -> None:
    sample = client.post("/api/samples", json={"name": "old model"}).json()
    service = client.app.state.service
    with service.sessions.begin() as session:
        store.get_sample(session, sample["id"]).model_sha256 = "0" * 64
    response = client.post(f"/api/samples/{sample['id']}/cells", files=cells(1))
    assert_error(response, 409, "another model")


def exclude(client: TestClient, cell_id: str, category: str, reviewer: str = "Dr. A") -> dict:
    body = {"exclude": category, "reviewer": reviewer}
    response = client.post(f"/api/cells/{cell_id}/label", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_excluded_cells_leave_the_differential_and_are_listed_apart(client: TestClient) -> None:
    sample = new_sample(client)
    unidentified = next(c for c in sample["cells"] if c["label"] is None)
    classified = next(c for c in sample["cells"] if c["label"] is not None)
    before = sample["differential"]
    result = exclude(client, unidentified["id"], "artefact")
    assert result["cell"]["exclusion"] == "artefact" and result["cell"]["label"] is None
    assert result["unidentified_count"] == sample["unidentified_count"] - 1
    result = exclude(client, classified["id"], "not_white_cell")
    differential = result["differential"]
    assert differential["excluded"] == {
        "artefact": 1, "smudged": 0, "not_white_cell": 1, "duplicate": 0
    }  # fmt: skip
    assert differential["white_cells_counted"] == before["white_cells_counted"] - 1
    assert differential["for_review"]["total"] == before["for_review"]["total"] - 1
    correction = result["cell"]["corrections"][-1]
    assert (correction["from_label"], correction["to_label"]) == (
        classified["label"], "excluded:not_white_cell"
    )  # fmt: skip
    assert_error(
        client.post(f"/api/cells/{classified['id']}/label", json={"exclude": "x", "reviewer": "A"}),
        422,
    )
    both = {"label": "monocyte", "exclude": "artefact", "reviewer": "A"}
    assert_error(client.post(f"/api/cells/{classified['id']}/label", json=both), 422)

    resolve_all(client, client.get(f"/api/samples/{sample['id']}").json())
    signed = client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. A"})
    assert signed.status_code == 200, signed.text
    assert signed.json()["excluded_count"] == 2
    rows = list(
        csv.DictReader(io.StringIO(client.get(f"/api/samples/{sample['id']}/cells.csv").text))
    )
    by_id = {row["cell_id"]: row for row in rows}
    assert by_id[unidentified["id"]]["label"] == "excluded"
    assert by_id[unidentified["id"]]["exclusion"] == "artefact"
    report = client.get(f"/api/samples/{sample['id']}/report.html").text
    assert "Excluded by the reviewer (not counted): artefact 1, not white cell 1." in report
    archive = zipfile.ZipFile(io.BytesIO(client.get("/api/reviewed.zip?signed_off=true").content))
    assert len(archive.namelist()) == N_CELLS - 2 + 1, "excluded cells only in excluded.csv"
    listed = list(csv.DictReader(io.StringIO(archive.read("excluded.csv").decode())))
    assert {row["cell_id"]: row["exclusion"] for row in listed} == {
        unidentified["id"]: "artefact", classified["id"]: "not_white_cell"
    }  # fmt: skip


def test_duplicate_uploads_are_detected_by_content(client: TestClient) -> None:
    sample = client.post("/api/samples", json={"name": "dups"}).json()
    url = f"/api/samples/{sample['id']}/cells"
    first = client.post(url, files=files(("a.jpg", cell_jpeg(0)), ("b.jpg", cell_jpeg(1)))).json()
    again = client.post(url, files=files(("a-again.jpg", cell_jpeg(0)), ("c.jpg", cell_jpeg(2))))
    added = again.json()["added"]
    assert added[0]["duplicate_of"] == first["added"][0]["id"]
    assert added[0]["exclusion"] == "duplicate" and added[0]["label"] is None
    assert added[1]["duplicate_of"] is None
    detail = client.get(f"/api/samples/{sample['id']}").json()
    assert detail["differential"]["excluded"]["duplicate"] == 1
    counted = detail["differential"]["white_cells_counted"]
    assert counted + detail["differential"]["for_review"]["total"] == 3
    restored = relabel(client, added[0]["id"], "monocyte")  # a reviewer may count it after all
    assert restored["cell"]["exclusion"] is None
    assert restored["differential"]["excluded"]["duplicate"] == 0


def test_comments_on_samples_and_cells(client: TestClient) -> None:
    sample = new_sample(client)
    cell = sample["cells"][2]
    url = f"/api/samples/{sample['id']}/comments"
    on_sample = client.post(url, json={"text": "Stain too pale", "reviewer": "Dr. A"})
    assert on_sample.status_code == 201 and on_sample.json()["cell_id"] is None
    on_cell = client.post(
        url, json={"text": "<i>odd</i> nucleus", "cell_id": cell["id"], "reviewer": "B"}
    )
    assert on_cell.json()["reviewer"] == "B"
    assert_error(client.post(url, json={"text": "x", "cell_id": "nope", "reviewer": "A"}), 404)
    assert_error(client.post(url, json={"text": " ", "reviewer": "A"}), 422)
    detail = client.get(f"/api/samples/{sample['id']}").json()
    assert [c["text"] for c in detail["comments"]] == ["Stain too pale", "<i>odd</i> nucleus"]
    rows = list(
        csv.DictReader(io.StringIO(client.get(f"/api/samples/{sample['id']}/cells.csv").text))
    )
    assert rows[2]["comments"] == "B: <i>odd</i> nucleus"
    report = client.get(f"/api/samples/{sample['id']}/report.html").text
    assert "Stain too pale" in report and "&lt;i&gt;odd&lt;/i&gt; nucleus" in report


def test_amendment_keeps_the_signed_version(client: TestClient) -> None:
    sample = new_sample(client)
    sid = sample["id"]
    url = f"/api/samples/{sid}/amendments"
    cell = sample["cells"][0]
    change = {"reason": "second look", "reviewer": "Dr. B", "changes": []}
    assert_error(
        client.post(url, json=change | {"changes": [{"cell_id": cell["id"], "label": "monocyte"}]}),
        409,
        "not signed off",
    )
    resolve_all(client, sample)
    signed = client.post(f"/api/samples/{sid}/signoff", json={"reviewer": "Dr. A"}).json()
    current = signed["cells"][0]["label"]
    target = next(name for name in WBC5 if name != current)
    assert_error(client.post(url, json=change), 422)
    same = {"cell_id": cell["id"], "label": current}
    assert_error(client.post(url, json=change | {"changes": [same]}), 409, "changes no cell")
    other = {"cell_id": cell["id"], "label": target}
    assert_error(client.post(url, json=change | {"reason": "", "changes": [other]}), 422)
    amended = client.post(url, json=change | {"changes": [other]})
    assert amended.status_code == 200, amended.text
    body = amended.json()
    assert body["signoff"] == signed["signoff"], "the signed version is kept as it was"
    [amendment] = body["amendments"]
    assert (amendment["reviewer"], amendment["reason"]) == ("Dr. B", "second look")
    [correction] = amendment["corrections"]
    assert (correction["from_label"], correction["to_label"]) == (current, target)
    assert correction["cell_id"] == cell["id"] and correction["amendment_id"] == amendment["id"]
    counts = {row["class"]: row["count"] for row in amendment["differential"]["rows"]}
    frozen = {row["class"]: row["count"] for row in signed["signoff"]["differential"]["rows"]}
    assert counts[target] == frozen[target] + 1 and counts[current] == frozen[current] - 1
    assert body["cells"][0]["label"] == target and body["amendment_count"] == 1
    locked = client.post(f"/api/cells/{cell['id']}/label", json={"label": current, "reviewer": "x"})
    assert_error(locked, 409, "read-only"), "direct changes stay refused"
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/samples/{sid}/cells.csv").text)))
    assert (rows[0]["signed_call"], rows[0]["label"]) == (current, target)
    report = client.get(f"/api/samples/{sid}/report.html").text
    assert "Amended by Dr. B" in report and "second look" in report
    assert "As signed off before amendment" in report


def test_named_reviewer_tokens_identify_the_reviewer(
    make_client: Callable[..., TestClient],
) -> None:
    tokens = {"token-of-doctor-a-0123": "Dr. A", "token-of-doctor-b-4567": "Dr. B"}
    shared = "shared-token-0123456789"
    client = make_client(reviewer_tokens=tokens, token=shared)
    as_a = {"Authorization": "Bearer token-of-doctor-a-0123"}
    as_shared = {"Authorization": f"Bearer {shared}"}
    assert client.get("/api/me", headers=as_a).json() == {
        "reviewer": "Dr. A",
        "named_reviewers": True,
    }
    assert client.get("/api/me", headers=as_shared).json()["reviewer"] is None
    assert_error(client.get("/api/samples", headers={"Authorization": "Bearer wrong"}), 401)
    sample = client.post("/api/samples", json={"name": "s"}, headers=as_shared).json()
    upload = client.post(f"/api/samples/{sample['id']}/cells", files=cells(1), headers=as_shared)
    cell = upload.json()["added"][0]
    url = f"/api/cells/{cell['id']}/label"
    result = client.post(url, json={"label": "basophil"}, headers=as_a)
    assert result.json()["cell"]["corrections"][-1]["reviewer"] == "Dr. A"
    forged = client.post(url, json={"label": "monocyte", "reviewer": "Dr. B"}, headers=as_a)
    assert_error(forged, 403, "belongs to Dr. A")
    assert_error(
        client.post(url, json={"label": "monocyte", "reviewer": "Dr. A"}, headers=as_shared),
        403,
        "named reviewer",
    )
    signed = client.post(f"/api/samples/{sample['id']}/signoff", json={}, headers=as_a).json()
    assert signed["signoff"]["reviewer"] == "Dr. A"


def test_single_token_and_open_modes_take_a_typed_name(client: TestClient) -> None:
    sample = new_sample(client)
    cell = sample["cells"][0]
    assert_error(
        client.post(f"/api/cells/{cell['id']}/label", json={"label": "basophil"}), 422, "name"
    )
    assert client.get("/api/me").json() == {"reviewer": None, "named_reviewers": False}


def test_tokenless_server_answers_only_loopback_host_names(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    for host in ["127.0.0.1:8000", "localhost", "[::1]:8000"]:
        assert client.get("/api/health", headers={"Host": host}).status_code == 200
    for host in ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", ""]:
        assert_error(client.get("/api/health", headers={"Host": host}), 400, "DNS rebinding")
    with_token = make_client(token="x" * 16)
    assert with_token.get("/api/health", headers={"Host": "lab-server:8000"}).status_code == 200


def test_database_is_private(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client()
    new_sample(client)
    data_dir = tmp_path / "data"
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for name in ["leukoscope.db", "leukoscope.db-wal", "leukoscope.db-shm"]:
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_sample_unlike_the_training_data_withholds_flags_until_every_cell_is_confirmed(
    make_settings: Callable[..., Settings], predictor: Any
) -> None:
    from fastapi import FastAPI

    from leukoscope.service.app import create_app

    app: FastAPI = create_app(make_settings(), predictor=ExpectingFivePercent(predictor))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        sample = new_sample(client)
        differential = sample["differential"]
        assert differential["shift"]["shifted"] is True
        assert "unlike the model's training data" in differential["shift"]["message"]
        assert differential["shift"]["message"].endswith("Try this model's own adaptation.")
        assert differential["flags"] == []
        withheld = differential["withheld_flags"]
        report = client.get(f"/api/samples/{sample['id']}/report.html").text
        assert "look unlike the model" in report
        confident = [c for c in sample["cells"] if c["label"] is not None]
        assert differential["to_confirm"] == len(confident) and confident
        identified = resolve_all(client, sample)["differential"]
        # The model's confident calls on such a sample are no safer than its flagged ones.
        assert identified["to_confirm"] == len(confident)
        assert identified["flags"] == [] and identified["withheld_flags"]
        signoff = client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. A"})
        assert_error(signoff, 409, f"{len(confident)} cell(s) have only the model's call")
        report = client.get(f"/api/samples/{sample['id']}/report.html").text
        assert f"{len(confident)} cell(s) with only the model's call to confirm" in report
        for cell in confident:
            confirmed = relabel(client, cell["id"], cell["label"])
            correction = confirmed["cell"]["corrections"][-1]
            assert correction["from_label"] == correction["to_label"] == cell["label"]
        again = relabel(client, confident[0]["id"], confident[0]["label"])
        assert len(again["cell"]["corrections"]) == 1, "a second confirmation adds nothing"
        reviewed = again["differential"]
        assert reviewed["to_confirm"] == 0
        assert reviewed["withheld_flags"] == [] and reviewed["shift"]["shifted"] is True
        assert len(reviewed["flags"]) >= len(withheld)
        signed = client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "Dr. A"})
        assert signed.status_code == 200, signed.text
        assert signed.json()["signoff"]["differential"]["to_confirm"] == 0


def test_a_samples_uploads_are_all_rescaled_by_the_magnification_its_first_one_measured(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """One sample, one magnification, as ``predict`` has it: an upload too small to measure
    its own (three cells) is rescaled by the one the sample's first upload measured."""
    import dataclasses

    import torch
    from PIL import Image

    from leukoscope.data.preprocess import SampleScale, ScaleEstimate
    from leukoscope.inference.predictor import Predictor
    from leukoscope.models import create_model, save_model
    from leukoscope.service.app import create_app
    from tests.service.conftest import tiny_card

    # Training cells a third of the frame: the synthetic cells (about 0.6 of it) are rescaled.
    card = tiny_card()
    scaled = dataclasses.replace(card.preprocessing, sample_scale=SampleScale(0.3, cells=100))
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", len(WBC5), weights="none")
    save_model(tmp_path / "model", model, dataclasses.replace(card, preprocessing=scaled))
    predictor = Predictor.load(tmp_path / "model", backend="torch")
    later = [10, 11, 12]
    with TestClient(
        create_app(make_settings(), predictor=predictor), base_url="http://127.0.0.1"
    ) as client:
        sample = new_sample(client)
        measured = sample["magnification"]
        assert measured["factor"] > 1.5 and measured["cells"] == N_CELLS
        upload = files(*((f"cell_{i}.jpg", cell_jpeg(i)) for i in later))
        response = client.post(f"/api/samples/{sample['id']}/cells", files=upload)
        assert response.status_code == 200, response.text
        detail = client.get(f"/api/samples/{sample['id']}").json()
        report = client.get(f"/api/samples/{sample['id']}/report.html").text
    assert detail["magnification"] == measured
    assert "Magnification: this sample&#x27;s cells are" in report
    images = [Image.open(io.BytesIO(cell_jpeg(i))).convert("RGB") for i in later]
    names = [f"cell_{i}.jpg" for i in later]
    alike = predictor.predict_images(images, names, ScaleEstimate.from_dict(measured))
    alone = predictor.predict_images(images, names)  # three cells: too few to measure
    stored = [cell["prediction"]["probabilities"] for cell in detail["cells"][N_CELLS:]]
    assert stored == [pytest.approx(p.probabilities, abs=1e-6) for p in alike]
    assert stored != [pytest.approx(p.probabilities, abs=1e-6) for p in alone]


def test_the_fallbacks_calls_are_stored_shown_and_exported(
    make_settings: Callable[..., Settings], predictor: Any
) -> None:
    from fastapi import FastAPI

    from leukoscope.service.app import create_app

    referring = ReferringFlagged(predictor)
    app: FastAPI = create_app(make_settings(), predictor=referring)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/model").json()["fallback"] == "slow-model"
        sample = new_sample(client)
        flagged = [cell["prediction"]["uncertain"] for cell in sample["cells"]]
        assert 0 < sum(flagged) < len(flagged)
        assert [cell["prediction"]["fallback"] for cell in sample["cells"]] == flagged
        csv_text = client.get(f"/api/samples/{sample['id']}/cells.csv").text
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert [row["fallback"] == "True" for row in rows] == flagged
        # A later upload is judged for shift (whether to refer) with the stored cells' flags.
        assert referring.earlier[-1] == []
        client.post(f"/api/samples/{sample['id']}/cells", files=files(("late", cell_jpeg(99))))
        assert referring.earlier[-1] == flagged
        classified = client.post("/api/classify", files=cells()).json()["predictions"]
        assert [p["fallback"] for p in classified] == [p["uncertain"] for p in classified]
