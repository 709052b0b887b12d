"""``metrics.json``, ``report.md`` and ``confusion_matrix.png`` for one evaluation.

The Markdown table follows scikit-learn's ``classification_report`` (and the reference study's
table): one row per class, then accuracy, macro average and weighted average.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from leukoscope.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text


def _row(name: str, scores: dict[str, Any]) -> str:
    return (
        f"| {name} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} "
        f"| {scores['support']} |"
    )


def classification_table(metrics: dict[str, Any]) -> str:
    """The per-class / accuracy / macro avg / weighted avg table in Markdown."""
    lines = [
        "| class | precision | recall | f1-score | support |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(_row(name, scores) for name, scores in metrics["per_class"].items()),
        f"| accuracy | | | {metrics['accuracy']:.4f} | {metrics['n_images']} |",
        _row("macro avg", metrics["macro_avg"]),
        _row("weighted avg", metrics["weighted_avg"]),
    ]
    return "\n".join(lines)


def mistakes_section(mistakes: Sequence[dict[str, Any]], grid: str | None) -> str:
    """The most confident mistakes as a table, with their heatmap grid (file name) if drawn."""
    lines = ["## Most confident mistakes", ""]
    if not mistakes:
        return "\n".join([*lines, "No mistakes.", ""])
    lines += [
        "| # | image | true | predicted | confidence |",
        "| ---: | --- | --- | --- | ---: |",
        *(
            f"| {rank} | `{Path(m['source']).name}` | {m['true']} | {m['predicted']} "
            f"| {m['confidence']:.3f} |"
            for rank, m in enumerate(mistakes, start=1)
        ),
        "",
    ]
    if grid is not None:
        lines += [
            "Grad-CAM heatmaps for the predicted class (where the model looked):",
            "",
            f"![Most confident mistakes]({grid})",
            "",
        ]
    return "\n".join(lines)


def sample_notes(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """What was done to the evaluated images as one sample before they were scored, as
    ``predict`` does it, as (title, sentence) pairs: rescaled to the training magnification,
    renormalised (or why not). Empty when the model was scored on the images as they are."""
    notes = []
    magnification = metrics.get("magnification") or {}
    if magnification.get("factor", 1.0) != 1.0:
        notes.append(("Magnification", f"{magnification['message']}."))
    if metrics.get("renormalised_cells"):
        notes.append(
            (
                "Renormalised",
                "the images looked unlike the training data as one sample, so the model was "
                f"renormalised on {metrics['renormalised_cells']} of them and scored so "
                "(--no-renormalise: the model as it is).",
            )
        )
    elif metrics.get("not_renormalised"):
        notes.append(
            (
                "Not renormalised",
                "the images looked unlike the training data, but "
                f"{metrics['not_renormalised']}; the model was scored as it is.",
            )
        )
    return notes


def markdown_report(metrics: dict[str, Any], sections: Sequence[str] = ()) -> str:
    """The whole ``report.md``: summary with intervals, the table, then ``sections`` (e.g.
    calibration, mistakes), skipped files and timing."""
    ci = metrics["bootstrap_95ci"]
    notes = sample_notes(metrics)
    views = metrics.get("test_time_views", 1)
    below = metrics.get("extra_views_below")
    unsure = "" if below is None else f" whose first view's calibrated confidence is below {below}"
    averaged = f", averaged over {views} turned views of each image{unsure}" if views > 1 else ""
    lines = [
        f"# Evaluation of {metrics['model']}",
        "",
        f"Data: {metrics['data']} ({metrics['n_images']} images, "
        f"{len(metrics['skipped'])} skipped); predictions by the "
        f"{metrics.get('backend', 'torch')} backend in {metrics.get('precision', 'fp32')}"
        f"{averaged}",
        "",
        *(f"**{title}:** {text}  " for title, text in notes),
        *([""] if notes else []),
        f"- accuracy: {metrics['accuracy']:.4f} "
        f"(95% CI {ci['accuracy'][0]:.4f}-{ci['accuracy'][1]:.4f})",
        f"- macro-F1: {metrics['macro_f1']:.4f} "
        f"(95% CI {ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f})",
        f"- balanced accuracy: {metrics['balanced_accuracy']:.4f}",
        f"- intervals: percentile bootstrap over images, {ci['resamples']} resamples, "
        f"seed {ci['seed']}",
        "",
        classification_table(metrics),
        "",
        "![Confusion matrix](confusion_matrix.png)",
        "",
        *sections,
    ]
    timing = metrics.get("timing")
    if timing:
        machine = timing["machine"]
        lines += [
            "## Inference speed",
            "",
            f"- batch 1: {timing['batch1_ms_median']:.2f} ms/image "
            f"(median of {timing['batch1_runs']} runs)",
            f"- batch {timing['throughput_batch']}: "
            f"{timing['throughput_images_per_s']:.1f} images/s",
            f"- machine: {machine['cpu']}, {machine['cpu_cores']} cores, "
            f"device {machine['device']}{', ' + machine['cuda'] if machine['cuda'] else ''}, "
            f"torch {machine['torch']}",
            "",
        ]
    if metrics["skipped"]:
        lines += ["## Skipped files", ""]
        lines += [f"- `{item['path']}`: {item['reason']}" for item in metrics["skipped"]]
        lines.append("")
    return "\n".join(lines)


def confusion_matrix_png(metrics: dict[str, Any]) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG, rendered by Agg
    on a standalone Figure (no pyplot state, no display needed)."""
    matrix = np.asarray(metrics["confusion_matrix"])
    size = 2.0 + 0.8 * len(matrix)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(matrix, display_labels=metrics["classes"])
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format="d")
    ax.set_title(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(
    out_dir: str | Path, metrics: dict[str, Any], sections: Sequence[str] = ()
) -> None:
    """Write the confusion matrix, the report and the metrics, each atomically."""
    out = Path(out_dir)
    atomic_write_bytes(out / "confusion_matrix.png", confusion_matrix_png(metrics))
    atomic_write_text(out / "report.md", markdown_report(metrics, sections))
    atomic_write_json(out / "metrics.json", metrics)
