"""``leukoscope reproduce``: the reference study's protocol for every arch, and a comparison."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console, err_console, log_to_console, rich_progress
from leukoscope.cli.options import Arch, DataOption, Profile
from leukoscope.data import default_dataset_dir
from leukoscope.errors import LeukoscopeError


def _names(text: str | None, known: list[str], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise LeukoscopeError(
            f"unknown {what} {', '.join(unknown)}: choose from {', '.join(known)}"
        )
    return names


def _weights_files(items: list[str]) -> dict[str, Path]:
    files = {}
    for item in items:
        arch, sep, path = item.partition("=")
        if not sep or arch not in [a.value for a in Arch]:
            raise LeukoscopeError(f"--weights-file {item!r}: use ARCH=PATH with a known arch")
        files[arch] = Path(path)
    return files


def reproduce_command(
    data: DataOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where runs and tables go (runs/reproduce[-quick])."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="CI-sized: a sample per class, 128 px, 3 epochs, two light archs."
        ),
    ] = False,
    per_class: Annotated[
        int, typer.Option("--per-class", min=4, help="Images per class with --quick.")
    ] = 40,
    archs: Annotated[
        str | None, typer.Option("--archs", help="Comma-separated subset of archs.")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="wbc5, pbc8 or both (comma).")
    ] = None,
    profile: Annotated[
        Profile | None, typer.Option("--profile", help="Training profile (default: the plan's).")
    ] = None,
    weights_file: Annotated[
        list[str] | None,
        typer.Option("--weights-file", help="ARCH=PATH local ImageNet weights (repeatable)."),
    ] = None,
) -> None:
    """Train and test every arch with the study's protocol; compare with its accuracies.

    Protocol: the 5 WBC classes (and, beyond the study, all 8 PBC classes); the study's 80/20
    split as a seeded 70/10/20 train/val/test split (validation carved from its 80%); 224 px;
    GAP -> dense 256 ReLU -> softmax head; scored once on the held-out test split.

    Resumable: finished archs are skipped, interrupted ones resumed. Archs whose ImageNet
    weights cannot be obtained are reported and the others go on.
    """
    from leukoscope.classes import TASKS
    from leukoscope.evaluation.study import (
        STUDY_ACCURACY,
        StudyPlan,
        comparison_markdown,
        failures,
        quick_plan,
        run_study,
    )

    log_to_console()
    plan = quick_plan(per_class) if quick else StudyPlan()
    plan = dataclasses.replace(
        plan,
        archs=_names(archs, list(STUDY_ACCURACY), "arch") or plan.archs,
        tasks=_names(tasks, list(TASKS), "task") or plan.tasks,
        profile=profile.value if profile is not None else plan.profile,
        weights_files=_weights_files(weights_file or []),
    )
    out = out or Path("runs/reproduce-quick" if quick else "runs/reproduce")
    results = run_study(data or default_dataset_dir(), out, plan, progress=rich_progress)
    console.print(comparison_markdown(results, plan), markup=False, highlight=False, soft_wrap=True)
    console.print(f"Written to {out / 'comparison.md'}")
    problems = failures(results, plan)
    for problem in problems:
        err_console.print(f"[bold red]check failed:[/] {problem}", highlight=False)
    if problems or all(r.metrics is None for r in results):
        raise typer.Exit(1)
