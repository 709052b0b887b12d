"""``leukoscope release``: publish a finished training run (``leukoscope.release``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, progress_bar
from leukoscope.cli.options import VIEWS_HELP, Views


def release_command(
    run: Annotated[Path, typer.Argument(help="Training run directory (holds model.safetensors).")],
    manifest: Annotated[Path, typer.Option("--manifest", help="The run's split manifest.")],
    name: Annotated[str, typer.Option("--name", help="Folder name under --models-dir.")],
    models_dir: Annotated[
        Path, typer.Option("--models-dir", help="Folder of released models.")
    ] = Path("models"),
    target_coverage: Annotated[
        float,
        typer.Option(
            "--target-coverage",
            min=0.5,
            max=1.0,
            help="Fraction of validation cells left unflagged.",
        ),
    ] = 0.95,
    views: Annotated[Views, typer.Option("--views", help=VIEWS_HELP)] = Views.ONE,
) -> None:
    """Calibrate on validation, evaluate on test, and publish to models/<name>/."""
    from leukoscope.evaluation.report import classification_table
    from leukoscope.release import release_model

    replaced = _fallback_of(models_dir / name)

    release = release_model(
        run,
        manifest,
        name,
        models_dir=models_dir,
        target_coverage=target_coverage,
        views=int(views),
        progress=progress_bar,
    )
    metrics = release.metrics
    console.print(classification_table(metrics))
    console.print(
        f"Released {release.path}: test accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f} on {metrics['n_images']} images"
    )
    if replaced is not None:
        console.print(
            f"[bold]Note:[/] the model it replaced had a fallback, {replaced}; this one has "
            f"none (set it with leukoscope fallback --model {release.path} --to MODEL)",
            highlight=False,
        )


def _fallback_of(model_dir: Path) -> str | None:
    """The fallback a released model's card names, if there is a readable one."""
    from leukoscope.errors import LeukoscopeError
    from leukoscope.models.card import CARD_NAME, load_card

    if not (model_dir / CARD_NAME).is_file():
        return None
    try:
        fallback = load_card(model_dir / CARD_NAME).fallback
    except LeukoscopeError:  # a broken card is replaced anyway
        return None
    return None if fallback is None else fallback.model
