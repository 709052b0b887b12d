import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from leukoscope.cli.app import app


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leukoscope", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: typer.core.TyperCommand, prefix: list[str]) -> None:
        paths.append(prefix)
        if isinstance(cmd, TyperGroup):
            for name, sub in cmd.commands.items():
                walk(sub, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path: list[str]) -> None:
    result = run_cli(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = run_cli("data", "audit", str(tmp_path / "missing"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing'}: dataset folder not found"]
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "data", "audit", str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_audit_and_split_commands(messy_dataset: Path, tmp_path: Path) -> None:
    audit = run_cli("data", "audit", str(messy_dataset), "--out", str(tmp_path / "a.json"))
    assert audit.returncode == 0, audit.stderr
    assert "label conflict" in audit.stdout
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["problems"]["truncated"][0]["path"] == "LY/cut.jpg"

    args = ["data", "split", str(messy_dataset), "--classes", "basophil,eosinophil,LY,NEU"]
    first = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "m1.csv"))
    second = run_cli(*args, "--seed", "3", "--out", str(tmp_path / "m2.csv"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert (tmp_path / "m1.csv").read_bytes() == (tmp_path / "m2.csv").read_bytes()
    assert "Excluded" in first.stdout

    copy = tmp_path / "copy"
    resized = run_cli("data", "resize", str(tmp_path / "m1.csv"), "--out", str(copy), "--size=48")
    assert resized.returncode == 0, resized.stderr
    assert "Wrote" in resized.stdout and (copy / "manifest.csv").is_file()
    assert len(list(copy.glob("*/*.webp"))) == len((copy / "manifest.csv").read_text().split()) - 1


def test_bad_class_spec_is_reported(messy_dataset: Path, tmp_path: Path) -> None:
    result = run_cli("data", "split", str(messy_dataset), "--classes", "foo", "--out", "x.csv")
    assert result.returncode == 1
    assert "unknown class 'foo'" in result.stderr


def test_demo_audits_a_sample_without_a_model(pbc_root: Path, tmp_path: Path) -> None:
    args = ["--data", str(pbc_root), "--sample", "3", "--out", str(tmp_path)]
    result = run_cli("demo", *args, "--model", str(tmp_path / "no-model"))
    assert result.returncode == 0, result.stderr
    assert "24 files under class folders" in (tmp_path / "report.md").read_text()


def test_demo_classifies_a_sample_with_the_released_model(pbc_root: Path, tmp_path: Path) -> None:
    from leukoscope.demo import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.safetensors").is_file():
        pytest.skip("no released model")
    result = run_cli("demo", "--data", str(pbc_root), "--sample", "4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    assert "32 images of" in report and "White-cell differential" in report  # 4 x 8 classes
    assert "not a diagnosis" in report
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 33
