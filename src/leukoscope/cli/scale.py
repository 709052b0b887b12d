"""``leukoscope scale``: measure the training images' cell size, to match other labs' samples."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console
from leukoscope.cli.options import Split
from leukoscope.errors import LeukoscopeError


def scale_command(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    manifest: Annotated[
        Path, typer.Option("--manifest", help="Split manifest the model was trained on.")
    ],
    split: Annotated[Split, typer.Option("--split", help="Split to measure.")] = Split.TRAIN,
) -> None:
    """Measure the median size of the training images' cells and store it in the model card.

    Each sample (a predict or differential run, a web-app upload) from another lab is then
    rescaled by one factor so that its cells match it. Training records it by itself; this
    adds it to a model trained before.
    """
    import dataclasses

    from leukoscope.data.datasets import read_manifest
    from leukoscope.data.preprocess import measure_reference_scale
    from leukoscope.models.card import card_path, load_card, update_card

    card = load_card(card_path(model))
    if card.preprocessing.framing is not None:
        raise LeukoscopeError(f"{model}: a framed model brings every cell to one size by itself")
    samples, _ = read_manifest(manifest, split.value, card.classes)
    scale = measure_reference_scale(samples, card.classes, card.preprocessing.draft_size)
    update_card(model, preprocessing=dataclasses.replace(card.preprocessing, sample_scale=scale))
    console.print(
        f"{model}: the {split.value} images' cells span {scale.cell_fraction:.3f} of the side "
        f"(median of {scale.cells}); stored in the model card",
        highlight=False,
    )
