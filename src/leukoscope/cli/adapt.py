"""``leukoscope adapt``: fit a model to a new lab, on a few labelled cells or many unlabelled."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, print_skipped


def adapt_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory to start from.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Labelled cells of the new lab: class folders with PBC names "
            "(e.g. what `leukoscope review export` writes); with --unlabelled, any folder "
            "of its cell images.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="New model directory (replaced if present).")],
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Optimiser steps (class-balanced batches).")
    ] = 150,
    trainable_stages: Annotated[
        int, typer.Option("--trainable-stages", min=0, help="Top backbone stages that learn.")
    ] = 8,
    folds: Annotated[
        int,
        typer.Option(
            "--folds",
            min=0,
            help="Out-of-fold recalibration folds (0: keep the source temperature).",
        ),
    ] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the batches and views.")] = 0,
    unlabelled: Annotated[
        bool,
        typer.Option(
            "--unlabelled",
            help="Use no labels: only re-estimate the normalisation statistics on the lab's "
            "cells (at least 32; models with BatchNorm). The uncertainty flags follow the "
            "rule the source carries for renormalised models (else the source's own).",
        ),
    ] = False,
) -> None:
    """Adapt a model to another lab's images: a few labelled cells per class, or unlabelled ones.

    Labelled: the head and top stages learn from many random views of each cell; the
    temperature and the abstention threshold are refitted on out-of-fold predictions.
    Unlabelled: the BatchNorm statistics become the lab's cells', nothing else changes (the
    calls improve on another lab's stain); the flags follow the source's rule for renormalised
    models, fitted by calibrate.
    The new model's card names the source model and every cell file by sha256.
    """
    from leukoscope.training.adapt import AdaptOptions, adapt

    options = AdaptOptions(
        steps=steps,
        trainable_stages=trainable_stages,
        folds=folds,
        seed=seed,
        labelled=not unlabelled,
    )
    with console.status("Adapting") as status:
        result = adapt(
            model,
            data,
            out,
            options=options,
            on_progress=lambda message: status.update(f"Adapting: {message}"),
        )
    print_skipped(result.skipped)
    console.print(f"Adapted on {result.summary}")
    console.print(f"Model: {result.path}")
