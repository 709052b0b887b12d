import io
import urllib.error
import zipfile
from pathlib import Path

import pytest

from leukoscope.classes import PBC8
from leukoscope.data import download
from leukoscope.errors import LeukoscopeError


def test_offline_download_fails_with_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(LeukoscopeError) as info:
        download.download_dataset("pbc", dest=tmp_path / "pbc")
    message = str(info.value)
    assert "are you offline" in message
    assert "https://data.mendeley.com/datasets/snkd93bnjr/1" in message
    assert "LEUKOSCOPE_DATA" in message
    assert not (tmp_path / "pbc").exists()


def test_unknown_dataset() -> None:
    with pytest.raises(LeukoscopeError, match="unknown dataset"):
        download.download_dataset("mnist")


def _nested_archive(n_per_class: int) -> bytes:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for label in PBC8:
            for i in range(n_per_class):
                z.writestr(f"PBC_dataset_normal_DIB/{label}/{label[:2].upper()}_{i}.jpg", b"jpeg")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("PBC_dataset_normal_DIB.zip", inner.getvalue())
    return outer.getvalue()


def test_unpack_finds_nested_class_folders(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_nested_archive(3))
    download._unpack(archive, tmp_path / "out")
    spec = download.DATASETS["pbc"]
    with pytest.raises(LeukoscopeError, match="holds 24 images"):
        download.find_dataset_root(tmp_path / "out", spec)
    small = download.RemoteDataset(**{**spec.__dict__, "min_images": 24})
    root = download.find_dataset_root(tmp_path / "out", small)
    assert root.name == "PBC_dataset_normal_DIB"


def test_corrupt_archive_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(LeukoscopeError, match="not a valid zip"):
        download._unpack(archive, tmp_path / "out")
