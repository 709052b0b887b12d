"""``leukoscope demo``: the README's main job on a sample of a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from leukoscope.cli.app import app, console
from leukoscope.cli.data import default_data_dir, print_audit, run_audit
from leukoscope.data.audit import summary_lines
from leukoscope.fileio import atomic_write_json, atomic_write_text


@app.command("demo")
def demo(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Folder of class folders (default: $LEUKOSCOPE_DATA or ../shared/data/pbc).",
    ),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the report."),
    sample: int = typer.Option(25, "--sample", min=1, help="Images per class."),
) -> None:
    """Audit and summarise a sample of the dataset, writing a short report."""
    root = data or default_data_dir()
    report = run_audit(root, sample)
    print_audit(report)
    atomic_write_json(out / "audit.json", report)
    lines = [f"# leukoscope demo: audit of {sample} images per class of `{root}`", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    console.print(f"Report: {out / 'report.md'}")
