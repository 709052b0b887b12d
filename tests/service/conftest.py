"""Fixtures for the web service: a tiny random model that flags about half of the synthetic
cells as uncertain, and apps on temporary SQLite databases."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, make_url, text

from leukoscope.classes import WBC5
from leukoscope.data.preprocess import Preprocessing
from leukoscope.inference.predictor import Predictor
from leukoscope.models import HeadConfig, ModelCard, create_model, save_model
from leukoscope.models.card import BestEpoch
from leukoscope.service.app import create_app
from leukoscope.service.settings import Settings
from tests.conftest import cell_image

TOKEN = "test-token-0123456789abcdef"
N_CELLS = 8


def cell_jpeg(seed: int, fmt: str = "JPEG") -> bytes:
    """A synthetic cell image encoded as ``fmt``."""
    buffer = io.BytesIO()
    cell_image(seed, size=64).save(buffer, format=fmt)
    return buffer.getvalue()


def tiny_card() -> ModelCard:
    return ModelCard(
        "squeezenet1_1",
        WBC5,
        HeadConfig(),
        Preprocessing(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        validation=BestEpoch(
            epoch=1, phase="head", val_loss=1.0, val_accuracy=0.5, val_macro_f1=0.4
        ),
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", len(WBC5), weights="none")
    out = tmp_path_factory.mktemp("model")
    save_model(out, model, tiny_card())
    return out


@dataclass
class Wrapping:
    """A test predictor: the wrapped one's attributes, and its calls from ``predict_images``
    after :meth:`adjust` (each subclass changes one thing)."""

    predictor: Any
    earlier: list[list[bool]] = field(default_factory=list, init=False)
    """The sample's flags each ``predict_images`` call was given."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict_images(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        scale: Any = None,
        *,
        earlier: Sequence[bool] = (),
    ) -> list[Any]:
        self.earlier.append(list(earlier))
        predictions = self.predictor.predict_images(images, names, scale, earlier=earlier)
        return [self.adjust(prediction) for prediction in predictions]

    def adjust(self, prediction: Any) -> Any:
        return prediction


@dataclass
class FlagLowConfidence(Wrapping):
    """The real predictor, with predictions under ``threshold`` confidence flagged uncertain.

    A random model has no fitted abstention rule, so nothing would be flagged; the review
    workflow needs some cells in its unidentified group.
    """

    threshold: float

    def adjust(self, prediction: Any) -> Any:
        return replace(
            prediction, uncertain=prediction.uncertain or prediction.confidence < self.threshold
        )


@dataclass
class ReferringFlagged(Wrapping):
    """A predictor with a fallback model as the service sees one: the calls on the cells the
    wrapped predictor flags are marked as the fallback's (their labels kept: the service
    stores and shows what it is given; the referral itself is the predictor's, tested in
    tests/inference)."""

    fallback_dir = Path("models/slow-model")

    def adjust(self, prediction: Any) -> Any:
        return replace(prediction, fallback=prediction.uncertain and prediction.error is None)


@dataclass
class ExpectingFivePercent(Wrapping):
    """A predictor whose card's abstention rule flags 5% of in-domain cells: wrapping the test
    predictor (half its cells flagged), its samples look shifted."""

    shift_advice = "Try this model's own adaptation."

    @property
    def card(self) -> Any:
        from leukoscope.models.card import Abstention

        rule = Abstention("msp", threshold=0.5, target_coverage=0.95, stats_sha256="0" * 64)
        return replace(self.predictor.card, abstention=rule)


@pytest.fixture(scope="session")
def predictor(tiny_model: Path) -> Any:
    """The tiny model, flagging the less confident half of the test cells."""
    loaded = Predictor.load(tiny_model, backend="torch")
    images = [Image.open(io.BytesIO(cell_jpeg(seed))).convert("RGB") for seed in range(N_CELLS)]
    names = [str(seed) for seed in range(N_CELLS)]
    confidences = [p.confidence for p in loaded.predict_images(images, names)]
    return FlagLowConfidence(loaded, float(np.median(confidences)))


@pytest.fixture
def make_settings(tiny_model: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on a temporary data dir with small limits (overridable)."""

    def _make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_path": tiny_model,
            "data_dir": tmp_path / "data",
            "max_file_bytes": 100_000,
            "max_request_bytes": 400_000,
            "max_files": 10,
            **overrides,
        }
        return Settings(**values)

    return _make


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], predictor: Any
) -> Iterator[Callable[..., TestClient]]:
    """Start apps (lifespan included) sharing the loaded model; all are closed at the end."""
    clients: list[TestClient] = []

    def _make(**overrides: Any) -> TestClient:
        app: FastAPI = create_app(make_settings(**overrides), predictor=predictor)
        client = TestClient(app, base_url="http://127.0.0.1").__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def make_server(
    make_settings: Callable[..., Settings], predictor: Any
) -> Iterator[Callable[..., str]]:
    """Start real uvicorn servers in background threads (concurrent requests really run in
    its thread pool); returns their base URLs. All are stopped at the end. ``model`` replaces
    the tiny model's predictor."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def _make(model: Any = None, **overrides: Any) -> str:
        app = create_app(make_settings(**overrides), predictor=model or predictor)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield _make
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the server named by ``LEUKOSCOPE_TEST_POSTGRES_URL``
    (e.g. postgresql+psycopg://postgres:pw@127.0.0.1/postgres); skipped when it is not set."""
    server = os.environ.get("LEUKOSCOPE_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("LEUKOSCOPE_TEST_POSTGRES_URL not set")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"leukoscope_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` fields for TestClient; the content type claims JPEG on purpose."""
    return [("files", (name, data, "image/jpeg")) for name, data in items]


def cells(n: int = N_CELLS) -> list[tuple[str, tuple[str, bytes, str]]]:
    return files(*((f"cell_{i}.jpg", cell_jpeg(i)) for i in range(n)))
