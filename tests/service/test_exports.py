"""Exports of reviewed cells: every accepted image format, and no partial folder on failure."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from leukoscope.cli import app as cli_app
from leukoscope.data.images import SUPPORTED_FORMATS, is_image_name
from leukoscope.service import exports
from leukoscope.service.settings import Settings
from tests.conftest import cell_image
from tests.service.conftest import cell_jpeg, files


def encoded(fmt: str) -> bytes:
    """A synthetic cell in ``fmt``; MPO needs a second picture to stay MPO."""
    if fmt != "MPO":
        return cell_jpeg(3, fmt)
    buffer = io.BytesIO()
    first = cell_image(3, size=64)
    first.save(buffer, format="MPO", save_all=True, append_images=[cell_image(4, size=64)])
    return buffer.getvalue()


def export_cli(db_url: str, out: Path) -> object:
    return CliRunner().invoke(cli_app, ["review", "export", "--db", db_url, "--out", str(out)])


@pytest.mark.parametrize("fmt", sorted(SUPPORTED_FORMATS))
def test_every_accepted_format_exports(
    fmt: str, client: TestClient, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = encoded(fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    sample = client.post("/api/samples", json={"name": fmt}).json()
    added = client.post(f"/api/samples/{sample['id']}/cells", files=files(("c", data))).json()
    cell = added["added"][0]
    target = "monocyte" if cell["label"] != "monocyte" else "basophil"
    body = {"label": target, "reviewer": "Dr. A"}
    assert client.post(f"/api/cells/{cell['id']}/label", json=body).status_code == 200

    response = client.get("/api/reviewed.zip")
    assert response.status_code == 200, response.text
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    name = f"{target}/{cell['id']}.{exports.EXTENSIONS[fmt]}"
    assert archive.namelist() == [name] and archive.read(name) == data
    assert is_image_name(name), "data split and train must find the exported file"

    out = tmp_path / "reviewed"
    result = export_cli(make_settings().database_url, out)
    assert result.exit_code == 0, result.output
    assert (out / name).read_bytes() == data


def test_a_failed_export_leaves_no_folder(
    client: TestClient,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sample = client.post("/api/samples", json={"name": "s"}).json()
    upload = files(("a.jpg", cell_jpeg(0)), ("b.jpg", cell_jpeg(1)))
    added = client.post(f"/api/samples/{sample['id']}/cells", files=upload).json()["added"]
    for cell in added:
        client.post(f"/api/cells/{cell['id']}/label", json={"label": "basophil", "reviewer": "A"})
    calls = []

    def failing(session: object, cell_id: str) -> bytes:
        calls.append(cell_id)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return cell_jpeg(0)

    out = tmp_path / "reviewed"
    db_url = make_settings().database_url
    with monkeypatch.context() as patch:
        patch.setattr(exports, "cell_bytes", failing)
        assert export_cli(db_url, out).exit_code != 0
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "data"]
    again = export_cli(db_url, out)
    assert again.exit_code == 0, again.output
    assert len(list(out.glob("basophil/*.jpg"))) == 2
