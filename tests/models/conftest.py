"""Fixtures shared by the model tests: an isolated cache, no network, the SqueezeNet h5."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from leukoscope.models import weights


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


@pytest.fixture(scope="session")
def squeezenet_h5() -> Path:
    """The keras-squeezenet weights as the library finds them; skip the test when absent."""
    for folder in weights.squeezenet_h5_dirs():
        for name in weights.SQUEEZENET_H5_NAMES:
            if (folder / name).is_file():
                return folder / name
    pytest.skip(
        f"{weights.SQUEEZENET_H5_NAMES[0]} not found (set LEUKOSCOPE_WEIGHTS_DIR to its folder)"
    )
