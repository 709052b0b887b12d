"""``leukoscope demo``: the README's main job on a sample of a dataset.

With a released model (by default ``models/pbc8-efficientnet_lite0``, all eight PBC classes) it
classifies a sample of each class folder and writes a short report; without one it audits the
sample instead.
"""

from __future__ import annotations

from pathlib import Path

import typer

from leukoscope.cli.app import app, console
from leukoscope.cli.data import default_data_dir, print_audit, run_audit
from leukoscope.cli.predict import load_predictor, predictions_csv, run_predictions
from leukoscope.data.audit import summary_lines
from leukoscope.data.datasets import Sample, samples_from_folder
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.reports.differential import CellCall, compute_differential, render_markdown

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL = REPO_ROOT / "models" / "pbc8-efficientnet_lite0"


def spaced_sample(samples: list[Sample], per_class: int) -> list[Sample]:
    """Up to ``per_class`` images of each class, evenly spaced through its sorted files."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    picked: list[Sample] = []
    for group in by_label.values():
        step = max(1, len(group) // per_class)
        picked += group[::step][:per_class]
    return picked


def classify_sample(model: Path, root: Path, per_class: int, out: Path) -> None:
    """Classify a sample of ``root`` and write predictions.csv and report.md to ``out``."""
    predictor = load_predictor(model, "auto")
    samples, classes = samples_from_folder(root, predictor.classes)
    picked = spaced_sample(samples, per_class)
    predictions = run_predictions(predictor, [s.path for s in picked], 64, 2)
    atomic_write_text(out / "predictions.csv", predictions_csv(predictions, classes))
    read = [(s, p) for s, p in zip(picked, predictions, strict=True) if p.error is None]
    sure = [(s, p) for s, p in read if not p.uncertain]
    correct = sum(p.label == classes[s.label] for s, p in sure)
    lines = [
        f"# leukoscope demo: {len(picked)} images of `{root}` classified by `{model.name}`",
        "",
        f"- model: {predictor.card['arch']}, {len(classes)} classes, backend {predictor.backend}",
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
    differential = compute_differential(cells, classes)
    atomic_write_json(out / "differential.json", differential)
    lines += ["", "## The sample read as one smear", "", render_markdown(differential)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    console.print("\n".join(lines[:5]), highlight=False)


def audit_sample(root: Path, per_class: int, out: Path) -> None:
    """Audit a sample of ``root`` and write audit.json and report.md to ``out``."""
    report = run_audit(root, per_class)
    print_audit(report)
    atomic_write_json(out / "audit.json", report)
    lines = [f"# leukoscope demo: audit of {per_class} images per class of `{root}`", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


@app.command("demo")
def demo(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Folder of class folders (default: $LEUKOSCOPE_DATA or ../shared/data/pbc).",
    ),
    model: Path = typer.Option(
        DEFAULT_MODEL, "--model", help="Released model; when absent, the sample is audited."
    ),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the report."),
    sample: int = typer.Option(25, "--sample", min=1, help="Images per class."),
) -> None:
    """Classify a sample of the dataset with a released model and write a short report."""
    root = data or default_data_dir()
    if (model / "model.safetensors").is_file():
        classify_sample(model, root, sample, out)
    else:
        console.print(f"No released model at {model}: auditing the sample instead.")
        audit_sample(root, sample, out)
    console.print(f"Report: {out / 'report.md'}")
