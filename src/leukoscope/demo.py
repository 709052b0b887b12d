"""The README's main job (``make demo``): classify a sample of a dataset and report on it.

With a released model (by default ``models/pbc8-efficientnet_lite0``, all eight PBC classes)
:func:`classify_sample` classifies an evenly spaced sample of each class folder and writes a
short report with the sample's differential; without one, :func:`audit_sample` audits the
sample instead, so that the job still shows something on a fresh checkout.

The command line's ``demo`` and ``serve`` take :data:`DEFAULT_MODEL` from here as their default
model and show it in their help, so this module imports the dataset, model and report code only
inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukoscope.fileio import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from leukoscope.inference.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "models" / "pbc8-efficientnet_lite0"


def has_released_model(model: Path) -> bool:
    """Whether ``model`` is a model folder the demo can classify with."""
    return (model / "model.safetensors").is_file()


def classify_sample(
    predictor: Predictor,
    model: Path,
    root: Path,
    per_class: int,
    out: Path,
    *,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Classify a sample of ``root`` with ``predictor`` (loaded from ``model``).

    Writes ``predictions.csv``, ``differential.json`` and ``report.md`` to ``out``.

    Returns
    -------
    list of str
        The report's Markdown lines.
    """
    from leukoscope.data.datasets import evenly_spaced, samples_from_folder
    from leukoscope.reports.differential import CellCall, compute_differential, render_markdown
    from leukoscope.reports.predictions import predictions_csv

    samples, classes = samples_from_folder(root, predictor.classes)
    picked = evenly_spaced(samples, per_class)
    if on_total is not None:
        on_total(len(picked))
    predictions = predictor.predict_paths(
        [s.path for s in picked], batch_size=64, workers=2, on_progress=on_progress
    )
    shift = predictor.check_shift(predictions)
    atomic_write_text(out / "predictions.csv", predictions_csv(predictions, classes, shift=shift))
    read = [(s, p) for s, p in zip(picked, predictions, strict=True) if p.error is None]
    sure = [(s, p) for s, p in read if not p.uncertain]
    correct = sum(p.label == classes[s.label] for s, p in sure)
    lines = [
        f"# leukoscope demo: {len(picked)} images of `{root}` classified by `{model.name}`",
        "",
        f"- model: {predictor.card.arch}, {len(classes)} classes, backend {predictor.backend} "
        f"({predictor.precision})",
        f"- unreadable: {len(picked) - len(read)}; flagged uncertain (for review): "
        f"{len(read) - len(sure)}",
        f"- agreement with the folder labels on the {len(sure)} confident calls: "
        f"{correct}/{len(sure)} ({correct / max(1, len(sure)):.1%}); the sample may include "
        f"images the model was trained on: held-out accuracy is in `{model}/evaluation/report.md`",
        "",
        "| class | images | confident calls correct |",
        "| --- | ---: | ---: |",
    ]
    for index, label in enumerate(classes):
        mine = [(s, p) for s, p in sure if s.label == index]
        good = sum(p.label == label for _, p in mine)
        lines.append(f"| {label} | {sum(s.label == index for s in picked)} | {good}/{len(mine)} |")
    cells = [CellCall(p.label, p.uncertain) for _, p in read if p.label is not None]
    differential = compute_differential(cells, classes, shift)
    atomic_write_json(out / "differential.json", differential)
    lines += ["", "## The sample read as one smear", "", render_markdown(differential)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return lines


def audit_sample(
    root: Path,
    per_class: int,
    out: Path,
    *,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Audit the first ``per_class`` files of each class of ``root``.

    Writes ``audit.json`` and ``report.md`` to ``out``.

    Returns
    -------
    dict
        The audit report of ``leukoscope.data.audit.audit_folder``.
    """
    from leukoscope.data.audit import audit_folder, summary_lines

    report = audit_folder(
        root, sample_per_class=per_class, on_total=on_total, on_progress=on_progress
    )
    atomic_write_json(out / "audit.json", report)
    lines = [f"# leukoscope demo: audit of {per_class} images per class of `{root}`", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return report
