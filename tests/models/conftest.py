"""Fixtures shared by the model tests: an isolated cache, no network, the SqueezeNet h5."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Keep the user's leukoscope and torch hub caches out of the tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LEUKOSCOPE_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    return cache


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every download fail as it would offline, so no test depends on the network."""

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
