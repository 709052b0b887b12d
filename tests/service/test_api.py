"""The stateless API: classification, heatmaps, differentials, limits, auth and error shape."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from leukoscope.classes import WBC5
from leukoscope.models.card import CARD_NAME, load_card
from leukoscope.service.app import create_app
from leukoscope.service.settings import Settings
from leukoscope.service.uploads import display_name
from tests.conftest import REPO
from tests.service.conftest import TOKEN, Wrapping, cell_jpeg, cells, files


def assert_error(response: object, status: int, contains: str = "") -> dict:
    """The response has ``status`` and the service's error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert contains in body["error"]
    return body


def test_health_and_model_info(client: TestClient) -> None:
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "version": "0.1.0", "model_arch": "squeezenet1_1",
                      "database": "sqlite"}  # fmt: skip
    info = client.get("/api/model").json()
    assert info["arch"] == "squeezenet1_1"
    assert info["classes"] == list(WBC5)
    assert info["metrics"] is None  # never released: no test scores (not its validation's)
    assert info["limits"]["max_files"] == 10
    assert len(info["sha256"]) == 64
    assert info["fallback"] is None


def test_model_info_gives_a_released_models_test_scores(
    make_settings: Callable[..., Settings], predictor: Any
) -> None:
    released = load_card(REPO / "models" / "wbc5-squeezenet1_1-128" / CARD_NAME)
    assert released.test_metrics is not None

    @dataclass
    class Released(Wrapping):
        card = dataclasses.replace(predictor.card, test_metrics=released.test_metrics)

    app = create_app(make_settings(), predictor=Released(predictor))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        metrics = client.get("/api/model").json()["metrics"]
    assert metrics["accuracy"] == released.test_metrics.accuracy
    assert metrics["n_images"] == released.test_metrics.n_images


def test_classify_many_images(client: TestClient) -> None:
    response = client.post("/api/classify", files=cells(4))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rejected"] == []
    assert [p["name"] for p in body["predictions"]] == [f"cell_{i}.jpg" for i in range(4)]
    for prediction in body["predictions"]:
        assert prediction["label"] in WBC5
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
        assert prediction["confidence"] == max(prediction["probabilities"].values())


def test_formats_are_sniffed_from_bytes_not_names(client: TestClient) -> None:
    png_named_jpg = ("really_png.jpg", cell_jpeg(1, "PNG"))
    tiff_named_bin = ("scan.bin", cell_jpeg(2, "TIFF"))
    body = client.post("/api/classify", files=files(png_named_jpg, tiff_named_bin)).json()
    assert len(body["predictions"]) == 2 and body["rejected"] == []


def test_client_file_names_are_display_text_only(client: TestClient) -> None:
    upload = files(("../../etc/passwd.jpg", cell_jpeg(0)), ("..\\..\\win.jpg", cell_jpeg(1)))
    body = client.post("/api/classify", files=upload).json()
    assert [p["name"] for p in body["predictions"]] == ["passwd.jpg", "win.jpg"]
    assert display_name("a/b\x07\n.png", 0) == "b.png"
    assert display_name("../..", 4) == "upload-5"


def bomb_png() -> bytes:
    """9000 x 9000 one-bit pixels: 81 megapixels in a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 20_000
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "status", "reason"),
    [
        ("empty.jpg", b"", 400, "empty file"),
        ("notes.jpg", b"this is text, not a JPEG\n" * 20, 415, "not an image"),
        ("big.jpg", b"\xff\xd8" + b"0" * 150_000, 413, "file too large"),
        ("bomb.png", bomb_png(), 413, "decompression bomb"),
        ("cut.jpg", cell_jpeg(3)[:1000], 422, "truncated"),
    ],
)
def test_bad_uploads_are_refused(
    client: TestClient, name: str, data: bytes, status: int, reason: str
) -> None:
    body = assert_error(client.post("/api/classify", files=files((name, data))), status, name)
    assert body["detail"][0]["name"] == name and reason in body["detail"][0]["error"]


def test_bad_files_beside_good_ones_are_listed(client: TestClient) -> None:
    upload = files(("good.jpg", cell_jpeg(0)), ("empty.jpg", b""), ("notes.jpg", b"text"))
    body = client.post("/api/classify", files=upload).json()
    assert [p["name"] for p in body["predictions"]] == ["good.jpg"]
    assert [(r["name"], r["status"]) for r in body["rejected"]] == [
        ("empty.jpg", 400),
        ("notes.jpg", 415),
    ]


def test_too_many_files(client: TestClient) -> None:
    assert_error(client.post("/api/classify", files=cells(11)), 413, "too many files")


def test_oversized_request_is_refused_by_content_length(client: TestClient) -> None:
    upload = files(*((f"{i}.jpg", b"x" * 90_000) for i in range(5)))
    assert_error(client.post("/api/classify", files=upload), 413, "request body over the limit")


def test_oversized_request_is_refused_while_streaming(client: TestClient) -> None:
    """Without a Content-Length (chunked), the limit still applies as the body arrives."""

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
        for _ in range(50):
            yield b"x" * 10_000
        yield b"\r\n--b--\r\n"

    response = client.post(
        "/api/classify", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_error(response, 413, "request body over the limit")


def test_missing_files_field_is_a_validation_error(client: TestClient) -> None:
    body = assert_error(client.post("/api/classify"), 422, "invalid request")
    assert body["detail"][0]["loc"] == ["body", "files"]


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/api/nothing-here"), 404, "Not Found")
    assert_error(client.get("/etc/passwd"), 404)
    assert_error(client.get("/static/../service/app.py"), 404)
    assert_error(client.delete("/api/classify"), 405)


def test_heatmaps_are_pngs(client: TestClient) -> None:
    response = client.post("/api/heatmap", files={"file": ("c.jpg", cell_jpeg(0))})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    targeted = client.post(
        "/api/heatmap", files={"file": ("c.jpg", cell_jpeg(0))}, data={"target": "monocyte"}
    )
    assert targeted.status_code == 200
    unknown = client.post(
        "/api/heatmap", files={"file": ("c.jpg", cell_jpeg(0))}, data={"target": "platypus"}
    )
    assert_error(unknown, 422, "unknown class")
    assert_error(client.post("/api/heatmap", files={"file": ("e.jpg", b"")}), 400, "empty")


def test_differential_of_a_batch(client: TestClient) -> None:
    calls = [{"label": "neutrophil"}] * 6 + [{"label": "lymphocyte", "uncertain": True}] * 4
    differential = client.post("/api/differential", json={"cells": calls}).json()
    rows = {row["class"]: row for row in differential["rows"]}
    assert (rows["neutrophil"]["count"], rows["neutrophil"]["percent"]) == (6, 100.0)
    assert rows["neutrophil"]["ci_low"] < 100.0 and rows["neutrophil"]["status"] == "high"
    assert rows["lymphocyte"]["count"] == 0, "uncertain calls stay out of the percentages"
    assert differential["for_review"] == {"total": 4, "by_predicted_class": {"lymphocyte": 4}}
    assert {flag["code"] for flag in differential["flags"]} >= {"neutrophilia", "lymphopenia"}
    assert "not a diagnosis" in differential["disclaimer"]
    assert_error(
        client.post("/api/differential", json={"cells": [{"label": "dragon"}]}), 422, "dragon"
    )
    assert_error(client.post("/api/differential", json={"cells": []}), 422)
    assert_error(client.post("/api/differential", content=b"{not json"), 422)


@pytest.fixture
def secured(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(token=TOKEN)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"X-API-Token": "nope"},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_token_is_required_when_set(secured: TestClient, headers: dict[str, str]) -> None:
    response = secured.get("/api/model", headers=headers)
    assert_error(response, 401, "API token")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(secured.post("/api/classify", files=cells(1), headers=headers), 401)


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {TOKEN}"}, {"X-API-Token": TOKEN}])
def test_right_token_in_either_header(secured: TestClient, headers: dict[str, str]) -> None:
    assert secured.get("/api/model", headers=headers).status_code == 200
    assert secured.post("/api/classify", files=cells(1), headers=headers).status_code == 200


def test_page_and_health_need_no_token(secured: TestClient) -> None:
    assert secured.get("/api/health").status_code == 200
    page = secured.get("/")
    assert page.status_code == 200 and "<title>leukoscope" in page.text
    assert secured.get("/static/app.js").status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    schema = client.get("/api/openapi.json").json()
    paths = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert paths == {
        ("/api/health", "get"),
        ("/api/model", "get"),
        ("/api/classify", "post"),
        ("/api/heatmap", "post"),
        ("/api/differential", "post"),
        ("/api/samples", "get"),
        ("/api/samples", "post"),
        ("/api/samples/{sample_id}", "get"),
        ("/api/samples/{sample_id}/cells", "post"),
        ("/api/samples/{sample_id}/fields", "post"),
        ("/api/samples/{sample_id}/signoff", "post"),
        ("/api/samples/{sample_id}/confirmations", "post"),
        ("/api/samples/{sample_id}/renormalise", "post"),
        ("/api/samples/{sample_id}/amendments", "post"),
        ("/api/samples/{sample_id}/comments", "post"),
        ("/api/me", "get"),
        ("/api/samples/{sample_id}/cells.csv", "get"),
        ("/api/samples/{sample_id}/report.html", "get"),
        ("/api/cells/{cell_id}/image", "get"),
        ("/api/fields/{field_id}/image", "get"),
        ("/api/cells/{cell_id}/heatmap", "get"),
        ("/api/cells/{cell_id}/label", "post"),
        ("/api/reviewed.zip", "get"),
    }
    classify = schema["paths"]["/api/classify"]["post"]
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ClassifyResponse"
    )
    assert classify["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorOut"
    )
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_large_requests_are_classified_in_batches_in_order(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("leukoscope.service.runner.BATCH", 3)
    upload = cells(8)
    upload.insert(4, ("files", ("bad.jpg", b"nope", "image/jpeg")))
    body = client.post("/api/classify", files=upload).json()
    assert [p["name"] for p in body["predictions"]] == [f"cell_{i}.jpg" for i in range(8)]
    assert [r["name"] for r in body["rejected"]] == ["bad.jpg"]
    single = client.post("/api/classify", files=cells(8)).json()["predictions"]
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in single]
