"""``leukoscope train``: two-phase transfer learning from a split manifest."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.logging import RichHandler

from leukoscope.cli.app import app, console, err_console, progress_bar
from leukoscope.models import list_archs
from leukoscope.training.engine import Advance
from leukoscope.training.profiles import PROFILES
from leukoscope.training.trainer import TrainConfig, TrainResult, train


@contextmanager
def rich_progress(description: str, total: int) -> Iterator[Advance]:
    """Adapt the app's Rich progress bar to the trainer's ``advance(n)`` callback."""
    with progress_bar(description, total) as (progress, task):
        yield lambda n: progress.advance(task, n)


def log_to_console() -> None:
    """Show the library's INFO log lines (epoch summaries, skipped files) on stderr."""
    root = logging.getLogger("leukoscope")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=err_console, show_path=False, markup=False))
    root.setLevel(logging.INFO)


def print_result(result: TrainResult) -> None:
    best = result.best
    console.print(
        f"Best epoch {best['epoch']} ({best['phase']}): val accuracy {best['val_accuracy']:.4f}, "
        f"val macro-F1 {best['val_macro_f1']:.4f}"
    )
    if result.skipped:
        console.print(f"Skipped {len(result.skipped)} unreadable image(s); see train.log")
    console.print(f"Run: {result.run_dir} ({result.seconds:.0f} s)")


@app.command("train")
def train_command(
    manifest: Path = typer.Option(..., "--manifest", help="Split manifest CSV (data split)."),
    arch: str = typer.Option(..., "--arch", help=f"One of {', '.join(list_archs())}."),
    profile: str = typer.Option(
        "fast", "--profile", help=f"Recipe: {', '.join(PROFILES)} (fast fits 2 CPU cores)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory (default runs/<arch>-<profile>-<manifest>-seed<S>)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Fine-tuning epochs (overrides the profile)."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", min=32, help="Square input side in pixels."
    ),
    weights: str = typer.Option("imagenet", "--weights", help="imagenet or none."),
    weights_file: Path | None = typer.Option(
        None, "--weights-file", help="Local ImageNet weights (.safetensors, or .h5 for SqueezeNet)."
    ),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Start from a saved model of the same arch (backbone; head too if same classes).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every random stream."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per step."),
) -> None:
    """Train a classifier: frozen-backbone head training, then fine-tuning of upper stages.

    Checkpoints every epoch; run it under torchrun for multi-GPU DDP.
    """
    log_to_console()
    config = TrainConfig(
        manifest=manifest,
        arch=arch,
        profile=profile,
        out=out,
        resume=resume,
        epochs=epochs,
        image_size=image_size,
        weights=weights,
        weights_file=weights_file,
        init_from=init_from,
        seed=seed,
        batch_size=batch_size,
    )
    print_result(train(config, progress=rich_progress))
