"""Start-up of this checkout against another revision: ``--help``, one-image ``predict``, and
with ``--files`` a ``predict`` of many files.

A shared 2-core machine's speed drifts by tens of percent within an hour, so two
``benchmarks/inference.py`` runs cannot say what one change gained. Here both sources run in
the same interpreter and virtual environment, as fresh processes taking turns: the revision
``--base`` (checked out into a temporary git worktree) and this working tree, each put first
on ``PYTHONPATH``. For each released model (or ``--models``): ``leukoscope predict`` of one of
its test images with the model folder and default options, ``--turns`` times each (with
``--files N``, also a ``predict`` of N of its test files, 0 for all: the fixed costs a run pays
besides the files themselves, such as the sample's magnification estimate); then
``leukoscope --help``. Reports the median and every turn's wall seconds.

``--image`` names the one image instead of each model's first test image: e.g. a cell the
model flags uncertain, for which a model with a fallback opens its fallback too. With
``--differential FOLDER``, also ``leukoscope differential FOLDER`` with each model.

Run: python benchmarks/startup.py --base REV [--models models/a,models/b] [--turns 5]
     [--files N] [--image FILE] [--differential FOLDER] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inference import released_models, test_files
from results_file import write_results

REPO = Path(__file__).resolve().parents[1]


def revision(rev: str) -> str:
    """The commit ``rev`` names."""
    return subprocess.run(
        ["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def timed(args: list[str], source: Path) -> float:
    """Wall seconds of ``python -m leukoscope *args`` with ``source`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "leukoscope", *args], cwd=REPO, env=env, capture_output=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"leukoscope {' '.join(args)} ({source}) failed:\n{result.stderr!r}")
    return elapsed


def in_turns(args: list[str], sources: dict[str, Path], turns: int) -> dict[str, Any]:
    """``args`` run with each source in turn, ``turns`` times."""
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(turns):
        for name, source in sources.items():
            times[name].append(timed(args, source))
    return {
        name: {"median_s": round(statistics.median(t), 3), "runs_s": [round(x, 3) for x in t]}
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--models", help="comma-separated model folders (default: released)")
    parser.add_argument("--turns", type=int, default=5, help="runs of each command per source")
    parser.add_argument("--files", type=int, help="also predict this many test files (0: all)")
    parser.add_argument("--image", type=Path, help="the one image (default: a test image)")
    parser.add_argument("--differential", type=Path, help="also a differential of this folder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/startup.json")
    args = parser.parse_args()
    models = [Path(m) for m in args.models.split(",")] if args.models else released_models()
    base = revision(args.base)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), base], cwd=REPO, check=True
        )
        try:
            sources = {"base": tree / "src", "this": REPO / "src"}
            results: dict[str, Any] = {}
            for model in models:
                image = args.image or test_files(model, 1)[0][0]
                out = Path(tmp) / "one.csv"
                one_image = ["predict", str(image), "--model", str(model), "--out", str(out)]
                results[model.name] = in_turns(one_image, sources, args.turns)
                print(model.name, results[model.name], flush=True)
                if args.differential is not None:
                    report = Path(tmp) / "differential"
                    command = ["differential", str(args.differential), "--model", str(model)]
                    key = f"{model.name} (differential of {args.differential})"
                    results[key] = in_turns([*command, "--out", str(report)], sources, args.turns)
                    print(key, results[key], flush=True)
                if args.files is not None:
                    files = [str(path) for path in test_files(model, args.files)[0]]
                    many = ["predict", *files, "--model", str(model), "--out", str(out)]
                    key = f"{model.name} ({len(files)} files)"
                    results[key] = in_turns(many, sources, args.turns)
                    print(key, results[key], flush=True)
            results["--help"] = in_turns(["--help"], sources, args.turns)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    write_results(
        args.out,
        "startup",
        base=base,
        this=revision("HEAD") + (" with uncommitted changes" if dirty else ""),
        load_average=os.getloadavg(),
        turns=args.turns,
        notes="Wall seconds of fresh processes, base and this source in turns, the same "
        "interpreter and installed packages; one-image predict: the model folder, default "
        "options, --image or else the first image of test_files(model, 1) in "
        "benchmarks/inference.py.",
        results=results,
    )


if __name__ == "__main__":
    main()
