"""Scanning class folders: a file that cannot be read is reported, never fatal."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoscope.cli.app import app
from leukoscope.data.audit import audit_folder
from leukoscope.data.split import split_folder


@pytest.fixture
def unreadable_dataset(
    tmp_path: Path, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Two classes of readable cells and one ``chmod 000`` file. Root reads any file whatever
    its mode, so for root the permission check is emulated where the scan reads bytes."""
    root = tmp_path / "cells"
    for k, folder in enumerate(["basophil", "lymphocyte"]):
        for i in range(6):
            make_image(root / folder / f"{folder[:2]}_{i}.jpg", seed=10 * k + i)
    locked = make_image(root / "basophil" / "locked.jpg", seed=99)
    locked.chmod(0)
    if os.geteuid() == 0:
        read_bytes = pathlib.Path.read_bytes

        def denied(self: Path) -> bytes:
            if self.stat().st_mode & 0o444 == 0:
                raise PermissionError(13, "Permission denied", str(self))
            return read_bytes(self)

        monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    yield root
    locked.chmod(0o644)


def test_audit_reports_an_unreadable_file(unreadable_dataset: Path) -> None:
    report = audit_folder(unreadable_dataset, workers=1)
    unreadable = report["problems"]["unreadable"]
    assert [item["path"] for item in unreadable] == ["basophil/locked.jpg"]
    assert "Permission denied" in unreadable[0]["detail"]
    assert report["classes"]["basophil"] == {
        "folders": ["basophil"], "files": 7, "usable": 6, "problems": 1
    }  # fmt: skip


def test_split_excludes_an_unreadable_file(unreadable_dataset: Path) -> None:
    result = split_folder(
        unreadable_dataset, ("basophil", "lymphocyte"), seed=0, val=0.2, test=0.2, workers=1
    )
    assert len(result.rows) == 12
    assert [(e.path, e.reason) for e in result.excluded] == [
        ("basophil/locked.jpg", "cannot read file (Permission denied)")
    ]


def test_audit_and_split_commands_finish_with_an_unreadable_file(
    unreadable_dataset: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    audit = runner.invoke(app, ["data", "audit", str(unreadable_dataset)])
    assert audit.exit_code == 0, audit.output
    assert "unreadable" in audit.output and "basophil/locked.jpg" in audit.output
    out = tmp_path / "split.csv"
    args = ["data", "split", str(unreadable_dataset), "--classes", "basophil,lymphocyte"]
    split = runner.invoke(app, [*args, "--out", str(out)])
    assert split.exit_code == 0, split.output
    assert "locked.jpg" in (tmp_path / "split.excluded.csv").read_text()


def test_links_that_cannot_be_followed_are_reported(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    root = tmp_path / "cells"
    for i in range(3):
        make_image(root / "basophil" / f"ba_{i}.jpg", seed=i)
    folder = root / "basophil"
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "more").symlink_to(tmp_path, target_is_directory=True)
    (folder / "ok.jpg").symlink_to(folder / "ba_0.jpg")
    report = audit_folder(root, workers=1)
    details = {item["path"]: item["detail"] for item in report["problems"]["unreadable"]}
    assert set(details) == {"basophil/dangling.jpg", "basophil/loop.jpg", "basophil/more"}
    assert all(detail.startswith("link to ") for detail in details.values())
    assert report["classes"]["basophil"]["usable"] == 4, "a link to a file is read"
