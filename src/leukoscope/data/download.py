"""Fetching the published PBC dataset for users who do not have a copy.

The archive is downloaded to a temporary file, checked (zip CRCs, an optional expected sha256,
and the class folders and image count the paper describes), and only then unpacked into the
user's cache, so an interrupted or corrupt download never leaves a half dataset behind.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leukoscope.classes import PBC8, canonical_class
from leukoscope.data.images import is_image_name
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import cache_dir


@dataclass(frozen=True)
class RemoteDataset:
    name: str
    urls: tuple[str, ...]
    landing_page: str
    citation: str
    min_images: int
    classes: tuple[str, ...]


DATASETS: dict[str, RemoteDataset] = {
    "pbc": RemoteDataset(
        name="pbc",
        urls=(
            "https://data.mendeley.com/public-api/zip/snkd93bnjr/download/1",
            "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/snkd93bnjr-1.zip",
        ),
        landing_page="https://data.mendeley.com/datasets/snkd93bnjr/1",
        citation=(
            "Acevedo A. et al., A dataset of microscopic peripheral blood cell images for "
            "development of automatic recognition systems, Data in Brief 30 (2020) 105474, "
            "doi:10.17632/snkd93bnjr.1 (CC BY 4.0)"
        ),
        min_images=17_000,
        classes=PBC8,
    )
}


def dataset_dir(name: str) -> Path:
    """Where ``leukoscope data download NAME`` unpacks a dataset."""
    return cache_dir() / "data" / name


def download_dataset(
    name: str,
    *,
    dest: Path | None = None,
    expected_sha256: str | None = None,
    on_total: Callable[[int | None], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download, verify and unpack dataset ``name``; return the folder holding its class folders."""
    if name not in DATASETS:
        raise LeukoscopeError(f"unknown dataset {name!r}: available: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    dest = dest or dataset_dir(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}-download-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        digest = _fetch_any(spec, archive, timeout, on_total, on_progress)
        if expected_sha256 and digest != expected_sha256.lower():
            raise LeukoscopeError(
                f"{spec.urls[0]}: downloaded archive has sha256 {digest}, expected "
                f"{expected_sha256}; not unpacked"
            )
        staging = Path(tmp) / "unpacked"
        _unpack(archive, staging)
        root = find_dataset_root(staging, spec)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(root), dest)
        (dest / "SOURCE.txt").write_text(
            f"{spec.citation}\narchive sha256: {digest}\nfrom: {spec.landing_page}\n",
            encoding="utf-8",
        )
    return dest


def _fetch_any(
    spec: RemoteDataset,
    target: Path,
    timeout: float,
    on_total: Callable[[int | None], None] | None,
    on_progress: Callable[[int], None] | None,
) -> str:
    failures: list[str] = []
    for url in spec.urls:
        try:
            return _fetch(url, target, timeout, on_total, on_progress)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise LeukoscopeError(
        f"cannot download the {spec.name.upper()} dataset (are you offline?). Tried "
        + "; ".join(failures)
        + f". Download it by hand from {spec.landing_page}, unpack it, and pass the folder "
        "that holds the class folders with --data or the LEUKOSCOPE_DATA variable."
    )


def _fetch(
    url: str,
    target: Path,
    timeout: float,
    on_total: Callable[[int | None], None] | None,
    on_progress: Callable[[int], None] | None,
) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "leukoscope"})
    sha = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response, target.open("wb") as out:
        length = response.headers.get("Content-Length")
        if on_total:
            on_total(int(length) if length else None)
        while chunk := response.read(1 << 20):
            out.write(chunk)
            sha.update(chunk)
            if on_progress:
                on_progress(len(chunk))
    return sha.hexdigest()


def _unpack(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``; zips nested inside (as Mendeley packs them) too."""
    try:
        with zipfile.ZipFile(archive) as outer:
            bad = outer.testzip()
            if bad is not None:
                raise LeukoscopeError(f"{archive}: corrupt member {bad} (CRC mismatch)")
            outer.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise LeukoscopeError(f"{archive}: not a valid zip archive ({exc})") from None
    for inner in sorted(dest.rglob("*.zip")):
        data = inner.read_bytes()
        inner.unlink()
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as nested:
                nested.extractall(inner.parent / inner.stem)
        except zipfile.BadZipFile as exc:
            raise LeukoscopeError(f"{inner.name}: not a valid zip archive ({exc})") from None


def find_dataset_root(unpacked: Path, spec: RemoteDataset) -> Path:
    """The folder under ``unpacked`` that holds the class folders; checks the image count."""
    for candidate in sorted([unpacked, *unpacked.rglob("*")], key=lambda p: len(p.parts)):
        if not candidate.is_dir():
            continue
        classes = {canonical_class(p.name) for p in candidate.iterdir() if p.is_dir()}
        if set(spec.classes) <= classes:
            n_images = sum(1 for p in candidate.rglob("*") if p.is_file() and is_image_name(p))
            if n_images < spec.min_images:
                raise LeukoscopeError(
                    f"downloaded {spec.name} archive holds {n_images} images, expected at "
                    f"least {spec.min_images}; not unpacked"
                )
            return candidate
    raise LeukoscopeError(
        f"downloaded {spec.name} archive has no folder with the classes {', '.join(spec.classes)}"
    )
