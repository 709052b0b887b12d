"""Start-up: wall time of ``leukoscope --help``, of a usage error, and of a one-image ``predict``.

Run: .venv/bin/python benchmarks/startup.py [--model DIR] [--data DIR] [--runs 5]
     [--out FILE.json]

Each command runs ``--runs`` times as a fresh process (``python -m leukoscope``, as the
``leukoscope`` script does), timed from launch to exit; the median is the figure to quote, with
the CPU time and the load average beside it (other jobs on shared cores stretch wall time).
``import torch`` alone is timed the same way: the floor of any command that runs a model. Targets
(issue 13): ``--help`` under 1 s, one-image ``predict`` under 2 s, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import write_results

from leukoscope.data import default_dataset_dir
from leukoscope.data.datasets import samples_from_folder

REPO = Path(__file__).resolve().parents[1]
TARGETS_S = {"help": 1.0, "usage_error": 1.0, "predict_one_image": 2.0}


def timed_runs(
    command: list[str], runs: int, expect_code: int = 0
) -> tuple[list[float], list[float]]:
    """Wall seconds from launch to exit of ``command``, and the CPU seconds (user + system) it
    used, ``runs`` times. CPU time depends far less than wall time on other jobs sharing the
    cores."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode != expect_code:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return walls, cpus


def summary(
    timings: tuple[list[float], list[float]], target: float | None = None
) -> dict[str, object]:
    times, cpus = timings
    median = statistics.median(times)
    entry: dict[str, object] = {
        "runs_s": [round(t, 3) for t in times],
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
    }
    if target is not None:
        entry |= {"target_s": target, "meets_target": median < target}
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "wbc5-squeezenet1_1-128")
    parser.add_argument("--data", type=Path, default=default_dataset_dir())
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/startup.json")
    args = parser.parse_args()

    image = samples_from_folder(args.data)[0][0].path
    load_before = os.getloadavg()
    cli = [sys.executable, "-m", "leukoscope"]
    results: dict[str, dict[str, object]] = {}
    results["help"] = summary(timed_runs([*cli, "--help"], args.runs), TARGETS_S["help"])
    results["usage_error"] = summary(
        timed_runs([*cli, "predict", "--modle", "m", str(image)], args.runs, expect_code=2),
        TARGETS_S["usage_error"],
    )
    results["import_torch"] = summary(timed_runs([sys.executable, "-c", "import torch"], args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        predict = [*cli, "predict", str(image), "--model", str(args.model)]
        results["predict_one_image"] = summary(
            timed_runs([*predict, "--out", f"{tmp}/p.csv"], args.runs),
            TARGETS_S["predict_one_image"],
        )
    for name, entry in results.items():
        print(
            f"{name}: median {entry['median_s']} s (min {entry['min_s']}, max {entry['max_s']}), "
            f"CPU {entry['cpu_median_s']} s"
        )
    write_results(
        args.out,
        "startup",
        model=str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        image=image.name,
        predict_options="default (--batch-size 64 --workers 2 --backend auto)",
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        results=results,
    )


if __name__ == "__main__":
    main()
