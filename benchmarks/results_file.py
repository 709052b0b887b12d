"""The header every benchmark's JSON starts with: what ran, when, where."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leukoscope.fileio import atomic_write_json
from leukoscope.machine import describe_machine


def write_results(
    out: Path, benchmark: str, machine: dict[str, Any] | None = None, **fields: Any
) -> None:
    """Write ``fields`` to ``out`` atomically after the benchmark's name, its command line, the
    date and the ``machine``'s description (by default :func:`describe_machine` now)."""
    atomic_write_json(
        out,
        {
            "benchmark": benchmark,
            "command": "python " + " ".join(sys.argv),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine or describe_machine(),
            **fields,
        },
    )
    print(f"wrote {out}")
