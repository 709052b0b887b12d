"""The root app: help of every command, one-line usage errors, start-up without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

import leukoscope.cli
from leukoscope.cli import main
from leukoscope.cli.app import app
from leukoscope.cli.options import Command, Group

HEAVY = ("torch", "torchvision", "timm", "sklearn", "onnxruntime", "sqlalchemy", "fastapi")


def _commands() -> list[tuple[list[str], typer.core.TyperCommand]]:
    found: list[tuple[list[str], typer.core.TyperCommand]] = []

    def walk(cmd: typer.core.TyperCommand, path: list[str]) -> None:
        found.append((path, cmd))
        if isinstance(cmd, TyperGroup):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize(
    ("path", "command"),
    [pytest.param(path, command, id=" ".join(path) or "root") for path, command in _commands()],
)
def test_help_names_every_option_and_shows_no_bool_metavar(
    path: list[str], command: typer.core.TyperCommand
) -> None:
    assert isinstance(command, Command | Group), "register commands with cls=Command"
    assert command.help and "\n" not in command.help.split("\n\n")[0]
    for param in command.params:
        assert isinstance(param, TyperOption | TyperArgument)
        assert param.help, f"leukoscope {' '.join(path)}: {param.name} has no help"
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old, sys.argv = sys.argv, ["leukoscope", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = old
    return int(stop.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--modle", "m", "x"], "No such option --modle. Did you mean --model?"),
        (["train", "--manifest", "m.csv", "--arhc", "x"], "Did you mean --arch?"),
        (["predct"], "No such command 'predct'. Did you mean 'predict'?"),
        (["predict", "x", "--model", "m", "--out", "p.csv", "--batch-size", "0"], "'--batch-size'"),
        (["predict", "x", "--model", "m", "--out", "p.csv", "--backend", "onx"], "'onnx'"),
        (["train", "--manifest", "m.csv", "--arch", "vgg"], "'squeezenet1_1'"),
        (["predict", "x", "--out", "p.csv"], "Missing option '--model'"),
        (["export-reviewed", "--out", "x"], "'export-reviewed' is now 'leukoscope review export'"),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def _imported_by(args: list[str], modules: tuple[str, ...]) -> str:
    """What ``leukoscope *args`` prints, then which of ``modules`` it imported."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['leukoscope', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('leukoscope', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('imported:', sorted(m for m in {modules!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("args", [["--help"], ["predict", "--modle", "m", "x"]])
def test_help_and_usage_errors_import_no_heavy_library(args: list[str]) -> None:
    output = _imported_by(args, HEAVY)
    assert "imported: []" in output, output


def test_one_image_predict_with_an_export_imports_no_locator_or_training_library(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """SciPy and scikit-image (about 0.6 s to import on two cores) are for locating cells,
    which one image does not need (too few cells to estimate the sample's magnification);
    torch and timm are for PyTorch models."""
    image = make_image(tmp_path / "cell.jpg")
    model = Path(__file__).resolve().parents[2] / "models" / "wbc5-squeezenet1_1-128"
    args = ["predict", str(image), "--model", str(model), "--out", str(tmp_path / "p.csv")]
    output = _imported_by(args, ("scipy", "skimage", "torch", "timm"))
    assert (tmp_path / "p.csv").is_file(), output
    assert "imported: []" in output, output


def test_a_shifted_sample_with_a_model_that_cannot_be_renormalised_imports_no_torch(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    """Renormalising needs torch (about 7 s to import on two cores); a model without
    normalisation statistics (a SqueezeNet) is told so without it."""
    images = [make_image(tmp_path / "sample" / f"{i}.jpg", seed=i) for i in range(40)]
    model = Path(__file__).resolve().parents[2] / "models" / "wbc5-squeezenet1_1-128"
    out = tmp_path / "p.csv"
    args = ["predict", str(images[0].parent), "--model", str(model), "--out", str(out)]
    output = _imported_by(args, ("torch", "timm"))
    assert "look unlike the model's training data" in output, output
    assert "Not renormalised" in output and "imported: []" in output, output


def test_command_modules_import_no_other_command_module() -> None:
    """Only the app imports the command modules; they share cli.console and cli.options."""
    package = Path(leukoscope.cli.__file__).parent
    shared = {"leukoscope.cli.console", "leukoscope.cli.options"}
    for path in package.glob("*.py"):
        if path.stem in ("__init__", "app"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        cli = {name for name in imported if name and name.startswith("leukoscope.cli")}
        assert cli <= shared, f"{path.name} imports {sorted(cli - shared)}"
