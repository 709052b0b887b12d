"""The white-cell differential of one sample (one smear) from per-cell calls.

Percentages are of the white cells the model called with confidence; cells flagged
``uncertain`` are counted apart for review, erythroblasts (nucleated red cells) are reported per
100 white cells as in a manual differential, and platelets are counted separately. Each
percentage has a 95% Wilson score interval (Wilson 1927; it stays inside [0, 100] and keeps its
coverage for small counts, unlike the normal approximation), and is compared with adult
reference ranges to raise screening flags.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_json, atomic_write_text
from leukoscope.reports.predictions import predictions_csv

if TYPE_CHECKING:
    from leukoscope.cells.fields import CellBox
    from leukoscope.data.preprocess import ScaleEstimate
    from leukoscope.inference.predictor import Prediction
    from leukoscope.inference.shift import ShiftCheck

DISCLAIMER = (
    "Research use only. These counts come from an automated image classifier and the flags are "
    "screening aids for review by a qualified professional, not a diagnosis."
)

REFERENCE_SOURCE = (
    "Bain BJ, Bates I, Laffan MA (eds). Dacie and Lewis Practical Haematology, 12th edition. "
    "Elsevier, 2017. Chapter 2, Reference ranges and normal values: adult differential white "
    "cell count, as a percentage of the total white cells."
)
REFERENCE_RANGES: dict[str, tuple[float, float]] = {
    "neutrophil": (40.0, 80.0),
    "lymphocyte": (20.0, 40.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (1.0, 6.0),
    "basophil": (0.0, 2.0),  # the source gives "<1-2%"
}
"""Adult reference ranges, percent of white cells, from :data:`REFERENCE_SOURCE`."""

RANGE_FLAGS: dict[str, tuple[str | None, str | None]] = {
    "neutrophil": ("neutropenia", "neutrophilia"),
    "lymphocyte": ("lymphopenia", "lymphocytosis"),
    "monocyte": (None, "monocytosis"),
    "eosinophil": (None, "eosinophilia"),
    "basophil": (None, "basophilia"),
}
"""Class -> (flag below its range, flag above it)."""

PRESENCE_FLAGS: dict[str, tuple[str, str]] = {
    "ig": ("immature_granulocytes", "immature granulocytes present"),
    "erythroblast": ("erythroblasts", "erythroblasts (nucleated red cells) present"),
}
"""Classes whose mere presence in adult blood is flagged: class -> (code, text)."""

NOT_WHITE_CELLS = ("erythroblast", "platelet")
"""Classes kept out of the white-cell percentages."""

CONFIDENCE_LEVEL = 0.95


@dataclass(frozen=True)
class CellCall:
    """One cell's class as called by the model, and whether it was flagged for review."""

    label: str
    uncertain: bool = False


def wilson_interval(count: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of ``count / total``, in percent.

    The closed form, as ``scipy.stats.binomtest(count, total).proportion_ci(method="wilson")``
    computes it (``tests/reports/test_differential.py`` checks that they agree), without
    importing ``scipy.stats``: that took 1-2 s on two cores, more than the rest of a small
    ``differential``'s start-up.
    """
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE_LEVEL / 2)
    share, z2 = count / total, z * z
    centre = share + z2 / (2 * total)
    spread = z * math.sqrt(share * (1 - share) / total + z2 / (4 * total * total))
    low, high = (centre - spread) / (1 + z2 / total), (centre + spread) / (1 + z2 / total)
    return 100.0 * max(0.0, low), 100.0 * min(1.0, high)


def compute_differential(
    cells: Sequence[CellCall],
    classes: Sequence[str],
    shift: ShiftCheck | None = None,
    *,
    reviewed: bool = False,
) -> dict[str, object]:
    """Counts, percentages with intervals, reference comparison and flags (JSON-ready).

    With a ``shift`` check that found the sample unlike the model's training data, the flags
    move to ``withheld_flags`` (``flags`` stays empty) until a person has ``reviewed`` the
    cells; the check itself is kept in ``shift`` either way, for the warning.
    """
    unknown = sorted({c.label for c in cells} - set(classes))
    if unknown:
        raise ValueError(f"cells with labels not among the model's classes: {', '.join(unknown)}")
    confident = Counter(c.label for c in cells if not c.uncertain)
    review = Counter(c.label for c in cells if c.uncertain)
    white = [c for c in classes if c not in NOT_WHITE_CELLS]
    total_white = sum(confident[c] for c in white)
    rows = [_row(label, confident[label], total_white) for label in white]
    differential: dict[str, Any] = {
        "classes": list(classes),
        "cells_total": len(cells),
        "white_cells_counted": total_white,
        "for_review": {"total": sum(review.values()), "by_predicted_class": dict(review)},
        "rows": rows,
        "erythroblasts": None,
        "platelets": None,
        "reference": {
            "source": REFERENCE_SOURCE,
            "population": "adults",
            "ranges": {label: list(bounds) for label, bounds in REFERENCE_RANGES.items()},
        },
        "interval": f"{CONFIDENCE_LEVEL:.0%} Wilson score interval",
        "disclaimer": DISCLAIMER,
    }
    if "erythroblast" in classes:
        count = confident["erythroblast"]
        per_100 = 100.0 * count / total_white if total_white else None
        differential["erythroblasts"] = {"count": count, "per_100_white_cells": per_100}
    if "platelet" in classes:
        differential["platelets"] = {"count": confident["platelet"]}
    flags = _flags(rows, confident, classes)
    withheld = shift is not None and shift.shifted and not reviewed
    differential["flags"] = [] if withheld else flags
    differential["withheld_flags"] = flags if withheld else []
    differential["shift"] = shift.to_dict() if shift is not None else None
    differential["notes"] = _notes(total_white)
    return differential


def _row(label: str, count: int, total: int) -> dict[str, object]:
    low, high = wilson_interval(count, total) if total else (None, None)
    reference = REFERENCE_RANGES.get(label)
    percent = 100.0 * count / total if total else None
    status = None
    if percent is not None and reference is not None:
        status = "low" if percent < reference[0] else "high" if percent > reference[1] else "normal"
    return {
        "class": label,
        "count": count,
        "percent": percent,
        "ci_low": low,
        "ci_high": high,
        "reference_low": reference[0] if reference else None,
        "reference_high": reference[1] if reference else None,
        "status": status,
    }


def _flags(
    rows: Sequence[dict[str, Any]], confident: Counter[str], classes: Sequence[str]
) -> list[dict[str, object]]:
    """Range flags for percentages outside the reference, presence flags for abnormal cells.

    ``definite`` says whether the whole interval lies beyond the limit, i.e. the flag would
    stand even allowing for counting error.
    """
    flags: list[dict[str, object]] = []
    for row in rows:
        if row["status"] not in {"low", "high"}:
            continue
        below, above = RANGE_FLAGS.get(row["class"], (None, None))
        code = below if row["status"] == "low" else above
        if code is None:
            continue
        definite = (
            row["ci_high"] < row["reference_low"]
            if row["status"] == "low"
            else row["ci_low"] > row["reference_high"]
        )
        flags.append(
            {
                "code": code,
                "text": f"relative {code}: {row['class']}s {row['percent']:.1f}% (reference "
                f"{row['reference_low']:g}-{row['reference_high']:g}%)",
                "class": row["class"],
                "definite": bool(definite),
            }
        )
    for label, (code, text) in PRESENCE_FLAGS.items():
        if label in classes and confident[label] > 0:
            flags.append(
                {
                    "code": code,
                    "text": f"{text}: {confident[label]} cell(s)",
                    "class": label,
                    "definite": True,
                }
            )
    return flags


def _notes(total_white: int) -> list[str]:
    notes = [
        "Percentages are relative to the white cells counted; the clinical definitions of "
        "neutrophilia, lymphopenia and the like use absolute counts, which need the total white "
        "cell count from an analyser.",
        "Cells flagged for review are excluded from the percentages until a person classifies "
        "them.",
    ]
    if total_white < 100:
        notes.append(
            f"Only {total_white} white cells were counted; a manual differential counts 100 to "
            "200, and the intervals are correspondingly wide."
        )
    return notes


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def table_rows(differential: dict[str, Any]) -> list[list[str]]:
    """The differential table as text cells: class, count, %, 95% CI, reference, status."""
    rows = []
    for row in differential["rows"]:
        ci = "–" if row["ci_low"] is None else f"{row['ci_low']:.1f}–{row['ci_high']:.1f}%"
        reference = (
            "–"
            if row["reference_low"] is None
            else f"{row['reference_low']:g}–{row['reference_high']:g}%"
        )
        rows.append(
            [
                row["class"],
                str(row["count"]),
                _percent(row["percent"]),
                ci,
                reference,
                row["status"] or "–",
            ]
        )
    return rows


TABLE_HEADER = ["class", "count", "% of white cells", "95% CI", "adult reference", "status"]


def _extra_lines(differential: dict[str, Any]) -> list[str]:
    """Plain-text lines on cells outside the table."""
    lines = [
        f"Cells classified: {differential['cells_total']}; white cells counted: "
        f"{differential['white_cells_counted']}; flagged for review (not counted): "
        f"{differential['for_review']['total']}."
    ]
    if differential["erythroblasts"] is not None:
        e = differential["erythroblasts"]
        per_100 = "–" if e["per_100_white_cells"] is None else f"{e['per_100_white_cells']:.1f}"
        lines.append(f"Erythroblasts: {e['count']} ({per_100} per 100 white cells).")
    if differential["platelets"] is not None:
        lines.append(
            f"Platelets (not part of the differential): {differential['platelets']['count']}."
        )
    if differential.get("unreadable"):
        lines.append(f"Unreadable images skipped: {len(differential['unreadable'])}.")
    excluded = {name: n for name, n in (differential.get("excluded") or {}).items() if n}
    if excluded:
        counts = ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in excluded.items())
        lines.append(f"Excluded by the reviewer (not counted): {counts}.")
    return lines


def flag_lines(differential: dict[str, Any]) -> list[str]:
    """Each flag's text; a flag whose interval reaches into the reference range says so, so a
    weak flag never reads as a definite one. Flags withheld from a shifted sample are
    counted, not listed."""
    withheld = len(differential.get("withheld_flags") or [])
    held = [f"{withheld} flag(s) withheld until a person has reviewed every cell"]
    return [
        f"{flag['text']}" + ("" if flag["definite"] else " (interval overlaps the reference)")
        for flag in differential["flags"]
    ] + (held if withheld else [])


def shift_warning(differential: dict[str, Any]) -> str | None:
    """The sample-level warning to show above everything else, if the sample looks shifted."""
    shift = differential.get("shift")
    return shift["message"] if shift and shift["shifted"] else None


def _title(differential: dict[str, Any]) -> str:
    sample = differential.get("sample")
    return f"White-cell differential: {sample}" if sample else "White-cell differential"


def renormalised_note(differential: dict) -> str | None:
    """The report's sentence on the model renormalised on this sample, if it was."""
    cells = differential.get("renormalised_cells")
    if not cells:
        return None
    return (
        f"Renormalised: the model's normalisation statistics were re-estimated on {cells} of "
        "this sample's cells, since it looked unlike the training data."
    )


def render_markdown(differential: dict) -> str:
    """The differential as a Markdown report."""
    lines = [f"# {_title(differential)}", "", f"> **{DISCLAIMER}**", ""]
    warning = shift_warning(differential)
    if warning:
        lines += [f"> **Warning: {warning}**", ""]
    if differential.get("model"):
        lines += [f"Model: `{differential['model']}`", ""]
    if differential.get("magnification"):
        lines += [f"Magnification: {differential['magnification']['message']}", ""]
    if renormalised := renormalised_note(differential):
        lines += [renormalised, ""]
    lines += [
        "| " + " | ".join(TABLE_HEADER) + " |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        *("| " + " | ".join(row) + " |" for row in table_rows(differential)),
        "",
        *(f"{line}  " for line in _extra_lines(differential)),
        "",
        "## Flags",
        "",
        *([f"- {line}" for line in flag_lines(differential)] or ["- none"]),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in differential["notes"]),
        f"- Intervals: {differential['interval']}.",
        f"- Reference ranges (adults): {differential['reference']['source']}",
        "",
    ]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 50rem; margin: 2rem auto; color: #222; }
.disclaimer, .shift { border: 2px solid #b00; padding: .6rem 1rem; background: #fff4f4; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { border: 1px solid #bbb; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child, td:last-child { text-align: left; }
tr.low td, tr.high td { background: #fff0d0; }
@media print { body { margin: 0; } .disclaimer { background: none; } }
"""


def render_html(differential: dict) -> str:
    """The differential as one self-contained, printable HTML page (inline CSS, no scripts)."""
    e = html.escape
    body_rows = "\n".join(
        f'<tr class="{e(row["status"] or "")}">'
        + "".join(f"<td>{e(cell)}</td>" for cell in cells)
        + "</tr>"
        for row, cells in zip(differential["rows"], table_rows(differential), strict=True)
    )
    flags = flag_lines(differential) or ["none"]
    warning = shift_warning(differential)
    shift = f'<p class="shift"><strong>Warning: {e(warning)}</strong></p>' if warning else ""
    model = (
        f"<p>Model: <code>{e(differential['model'])}</code></p>"
        if differential.get("model")
        else ""
    )
    scale = differential.get("magnification")
    model += f"<p>Magnification: {e(scale['message'])}</p>" if scale else ""
    renormalised = renormalised_note(differential)
    model += f"<p>{e(renormalised)}</p>" if renormalised else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(_title(differential))}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{e(_title(differential))}</h1>
<p class="disclaimer"><strong>{e(DISCLAIMER)}</strong></p>
{shift}
{model}
<table>
<thead><tr>{"".join(f"<th>{e(h)}</th>" for h in TABLE_HEADER)}</tr></thead>
<tbody>
{body_rows}
</tbody>
</table>
{"".join(f"<p>{e(line)}</p>" for line in _extra_lines(differential))}
<h2>Flags</h2>
<ul>{"".join(f"<li>{e(line)}</li>" for line in flags)}</ul>
<h2>Notes</h2>
<ul>
{"".join(f"<li>{e(note)}</li>" for note in differential["notes"])}
<li>Intervals: {e(differential["interval"])}.</li>
<li>Reference ranges (adults): {e(differential["reference"]["source"])}</li>
</ul>
</body>
</html>
"""


RENDERERS = {"md": render_markdown, "html": render_html}
"""Report formats of :func:`write_sample_report` and their renderers."""


def write_sample_report(
    predictions: Sequence[Prediction],
    classes: Sequence[str],
    out: Path,
    *,
    sample: Path,
    model: Path,
    fmt: str = "md",
    shift: ShiftCheck | None = None,
    magnification: ScaleEstimate | None = None,
    boxes: Sequence[CellBox | None] | None = None,
    renormalised: int = 0,
) -> tuple[dict[str, Any], Path]:
    """The differential of one sample's predicted cells, written to ``out``.

    Parameters
    ----------
    predictions
        Every cell of the sample, unreadable files included (listed, not counted).
    classes
        The model's classes, in its order.
    out
        Folder for ``differential.json``, ``differential.<fmt>`` and ``cells.csv`` (every
        cell's call); each is written atomically.
    sample, model
        Recorded in the report.
    fmt
        A key of :data:`RENDERERS`.
    shift
        The sample's shift check (:meth:`~leukoscope.inference.predictor.Predictor.check_shift`):
        a shifted sample's report warns and withholds its flags.
    magnification
        How the sample was matched to the training images' magnification
        (:meth:`~leukoscope.inference.predictor.Predictor.estimate_scale`), recorded and shown.
    boxes
        For the cells of field images: each cell's box in its field (aligned with
        ``predictions``), written to ``cells.csv``; the cells are counted like any others.
    renormalised
        Cells the model was renormalised on for this sample (0: used as trained), recorded
        and shown.

    Returns
    -------
    report, path
        The differential as written to JSON, and the path of the rendered report.
    """
    if fmt not in RENDERERS:
        raise LeukoscopeError(f"unknown format {fmt!r}: use {' or '.join(RENDERERS)}")
    cells = [CellCall(p.label, p.uncertain) for p in predictions if p.label is not None]
    report = compute_differential(cells, classes, shift) | {
        "sample": str(sample),
        "model": str(model),
        "unreadable": [{"source": p.source, "error": p.error} for p in predictions if p.error],
        "magnification": None if magnification is None else magnification.to_dict(),
        "renormalised_cells": renormalised,
    }
    atomic_write_text(out / "cells.csv", predictions_csv(predictions, classes, boxes, shift))
    atomic_write_json(out / "differential.json", report)
    report_path = out / f"differential.{fmt}"
    atomic_write_text(report_path, RENDERERS[fmt](report))
    return report, report_path
