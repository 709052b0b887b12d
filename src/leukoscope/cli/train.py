"""``leukoscope train``: two-phase transfer learning from a split manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, log_to_console, rich_progress
from leukoscope.cli.options import Arch, Profile, Weights


def train_command(
    manifest: Annotated[Path, typer.Option("--manifest", help="Split manifest CSV (data split).")],
    arch: Annotated[Arch, typer.Option("--arch", help="Backbone.")],
    profile: Annotated[
        Profile, typer.Option("--profile", help="Recipe (fast fits 2 CPU cores).")
    ] = Profile.FAST,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run directory (default runs/<arch>-<profile>-<manifest>-seed<S>)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, help="Fine-tuning epochs (overrides the profile)."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", min=32, help="Square input side in pixels.")
    ] = None,
    weights: Annotated[
        Weights, typer.Option("--weights", help="Initial backbone weights.")
    ] = Weights.IMAGENET,
    weights_file: Annotated[
        Path | None,
        typer.Option(
            "--weights-file",
            help="Local ImageNet weights (.safetensors, or .h5 for SqueezeNet).",
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from a saved model of the same arch (backbone; head too if same classes).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random stream.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per step.")
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Distil: learn from this model's calibrated predictions (same classes) as "
            "well as the labels.",
        ),
    ] = None,
) -> None:
    """Train a classifier: frozen-backbone head training, then fine-tuning of upper stages.

    Checkpoints every epoch; run it under torchrun for multi-GPU DDP.
    """
    from leukoscope.training.trainer import TrainConfig, train

    log_to_console()
    config = TrainConfig(
        manifest=manifest,
        arch=arch.value,
        profile=profile.value,
        out=out,
        resume=resume,
        epochs=epochs,
        image_size=image_size,
        weights=weights.value,
        weights_file=weights_file,
        init_from=init_from,
        seed=seed,
        batch_size=batch_size,
        teacher=teacher,
    )
    result = train(config, progress=rich_progress)
    best = result.best
    console.print(
        f"Best epoch {best['epoch']} ({best['phase']}): val accuracy {best['val_accuracy']:.4f}, "
        f"val macro-F1 {best['val_macro_f1']:.4f}"
    )
    if result.skipped:
        console.print(f"Skipped {len(result.skipped)} unreadable image(s); see train.log")
    console.print(f"Run: {result.run_dir} ({result.seconds:.0f} s)")
