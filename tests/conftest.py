"""Fixtures shared across the suite: synthetic cell-like images and the real PBC sample."""

from __future__ import annotations

import ast
import io
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
PBC_ROOT = Path(os.environ.get("LEUKOSCOPE_DATA") or REPO / ".." / "shared" / "data" / "pbc")


@pytest.fixture
def without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """SciPy made unimportable for the test: importing it or any of its modules raises
    ImportError (in this process: a fresh interpreter, forked from the suite's process once
    OpenVINO had run in it, crashed the suite)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "scipy"] + ["scipy"]:
        monkeypatch.setitem(sys.modules, name, None)


def imported_packages(module: ModuleType) -> set[str]:
    """The top-level packages ``module``'s source imports anywhere (at module level or in a
    function)."""
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name.split(".")[0] for name in names if name}


def cell_image(
    seed: int, size: int = 96, hue: tuple[int, int, int] = (110, 60, 160)
) -> Image.Image:
    """A synthetic 'cell': a pale background with random blobs and a dark nucleus."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (232, 214, 222))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 10, size // 5))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(214, 170, 180))
    c = size // 2 + rng.integers(-size // 8, size // 8, 2)
    r = int(rng.integers(size // 6, size // 3))
    draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=hue)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a synthetic cell image to a path; returns the path."""

    def _make(path: Path, seed: int = 0, fmt: str | None = None, **kwargs: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        cell_image(seed, **kwargs).save(path, format=fmt)
        return path

    return _make


@pytest.fixture(scope="session")
def pbc_root() -> Path:
    """The real PBC dataset; tests that need it are skipped where it is absent."""
    if not (PBC_ROOT / "basophil").is_dir():
        pytest.skip(f"PBC dataset not found at {PBC_ROOT}")
    return PBC_ROOT


@pytest.fixture(scope="session")
def squeezenet_h5() -> Path:
    """The keras-squeezenet ImageNet weights as the library finds them; skip when absent."""
    from leukoscope.models import weights

    for folder in weights.squeezenet_h5_dirs():
        for name in weights.SQUEEZENET_H5_NAMES:
            if (folder / name).is_file():
                return folder / name
    pytest.skip(f"{weights.SQUEEZENET_H5_NAMES[0]} not found (set LEUKOSCOPE_WEIGHTS_DIR)")


@pytest.fixture(scope="session")
def pbc_sample(pbc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real sample: the first 6 images of each PBC class, linked into a temp folder."""
    out = tmp_path_factory.mktemp("pbc-sample")
    for class_dir in sorted(p for p in pbc_root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))[:6]
        (out / class_dir.name).mkdir()
        for f in files:
            (out / class_dir.name / f.name).symlink_to(f.resolve())
    return out


CLASS_HUES = {
    "Basophil": (70, 40, 130),
    "eosinophils": (200, 90, 60),
    "LY": (90, 70, 170),
    "NEU": (150, 80, 150),
}


@pytest.fixture
def messy_dataset(tmp_path: Path, make_image: Callable[..., Path]) -> Path:
    """Four classes under alias spellings, 12 images each, plus one of each defect."""
    root = tmp_path / "cells"
    for k, (folder, hue) in enumerate(CLASS_HUES.items()):
        for i in range(12):
            make_image(root / folder / f"{folder[:2]}_{i:03d}.jpg", seed=100 * k + i, hue=hue)
    neu, ly, baso = root / "NEU", root / "LY", root / "Basophil"
    (neu / "empty.jpg").write_bytes(b"")
    (neu / "readme.jpg").write_text("not an image")
    (neu / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    full = (ly / "LY_000.jpg").read_bytes()
    (ly / "cut.jpg").write_bytes(full[: len(full) // 2])
    shutil.copy(baso / "Ba_001.jpg", baso / "Ba_001_copy.jpg")  # exact dup, same class
    shutil.copy(ly / "LY_005.jpg", neu / "NE_conflict.jpg")  # exact dup, other class
    buffer = io.BytesIO()
    Image.open(baso / "Ba_002.jpg").save(buffer, format="JPEG", quality=60)
    (baso / "Ba_002_requality.jpg").write_bytes(buffer.getvalue())  # near-duplicate
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    (neu / "bomb.png").write_bytes(bomb.getvalue())
    (root / "notes").mkdir()
    cell_image(0).save(root / "notes" / "x.png")
    (root / "README.txt").write_text("loose file")
    return root


@pytest.fixture
def shifted_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sample that a model as loaded checks is called shifted, every cell flagged (a
    renormalised model's own checks are left as they are): the path a lab's other stain takes,
    with the small synthetic models of the tests."""
    import dataclasses

    from leukoscope.inference.predictor import Prediction, Predictor
    from leukoscope.inference.shift import ShiftCheck

    real_check = Predictor.check_shift

    def as_shifted(
        self: Predictor,
        predictions: Sequence[Prediction],
        on_edge: Sequence[bool] | None = None,
        *,
        earlier: Sequence[bool] = (),
    ) -> ShiftCheck | None:
        check = real_check(self, predictions, on_edge, earlier=earlier)
        if check is not None and self.card.adaptation is None:
            return dataclasses.replace(check, uncertain=check.cells, shifted=True)
        return check

    monkeypatch.setattr(Predictor, "check_shift", as_shifted)
