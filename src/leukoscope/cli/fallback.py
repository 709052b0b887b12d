"""``leukoscope fallback``: back a fast model with an accurate one for the cells it is unsure of."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console
from leukoscope.errors import LeukoscopeError


def fallback_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Model directory of the fallback (the same classes)."),
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the fallback.")] = False,
) -> None:
    """Let a second model classify the cells this one flags uncertain; stored in the card.

    A fast model backed by an accurate, slower one runs the slow one on its uncertain cells
    only: on the 5-class test split the 128-px SqueezeNet backed by the 4-view EfficientNet
    made 6 errors instead of 17 (docs/results.md). Every command that classifies cells with
    the model (predict, differential, evaluate, demo, the web app) then uses both.
    """
    from leukoscope.models.card import set_fallback

    if (to is None) == (not remove):
        raise LeukoscopeError("give one of --to MODEL or --remove")
    card = set_fallback(model, to)
    if card.fallback is None:
        console.print(f"{model}: no fallback; it keeps the cells it flags uncertain")
        return
    console.print(
        f"{model}: the cells it flags uncertain go to {card.fallback.model} "
        f"(weights {card.fallback.sha256[:12]}); stored in the model card",
        highlight=False,
    )
