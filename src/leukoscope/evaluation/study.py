"""The reference study's protocol, run for every arch, and the table comparing it to ours.

Protocol (as published): the five WBC classes of PBC, an 80/20 train/test split, 224 px
inputs, ImageNet backbones with a GAP -> Dense(256, ReLU) -> softmax head. Here the 80% is
split again into 70% train and 10% validation (for early stopping and model selection), the
20% test set is held out and scored once; splits are stratified, seeded and free of duplicate
leakage. The study has no eight-class results; we report the eight-class task beside it.

Each arch trains into its own run directory and is scored into ``<run>/test``; a finished
arch is skipped, an interrupted one resumed, and an arch whose ImageNet weights cannot be had
is reported as such while the others go on.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leukoscope.classes import TASKS, canonical_class
from leukoscope.data.datasets import read_manifest
from leukoscope.data.scan import list_class_files, scan_files
from leukoscope.data.split import assign_splits, split_folder, write_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.fileio import atomic_write_text
from leukoscope.training.trainer import ProgressFactory, TrainConfig, no_progress, train

logger = logging.getLogger(__name__)

STUDY_ACCURACY: dict[str, float | None] = {
    "squeezenet1_1": 0.992,
    "inception_v3": 0.98,
    "resnet50": 0.94,
    "efficientnet_lite0": None,
}
"""Test accuracy the study reports on the five WBC classes (EfficientNet-Lite0 was not in it)."""

STUDY_TASK = "wbc5"
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2
IMAGE_SIZE = 224


@dataclass(frozen=True)
class StudyPlan:
    """What to run; :func:`quick_plan` is the CI-sized variant."""

    tasks: tuple[str, ...] = ("wbc5", "pbc8")
    archs: tuple[str, ...] = tuple(STUDY_ACCURACY)
    profile: str = "fast"
    image_size: int = IMAGE_SIZE
    epochs: int | None = None
    per_class: int | None = None
    """Use only this many images per class (sampled with the split seed); None = all."""
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    weights_files: dict[str, Path] = field(default_factory=dict)
    min_accuracy_ratio: float | None = None
    """If set, fail unless every arch's test accuracy is this many times chance."""


def quick_plan(per_class: int = 40) -> StudyPlan:
    """A sample small enough for CI on two cores: two light archs, 128 px, three epochs."""
    return StudyPlan(
        tasks=(STUDY_TASK,),
        archs=("squeezenet1_1", "efficientnet_lite0"),
        image_size=128,
        epochs=3,
        per_class=per_class,
        evaluate=EvaluateOptions(resamples=200, latency_runs=5, throughput_runs=1),
        min_accuracy_ratio=2.0,
    )


@dataclass
class ArchResult:
    task: str
    arch: str
    metrics: dict[str, Any] | None = None
    best_val: dict[str, Any] | None = None
    epochs: int = 0
    wall_seconds: float = 0.0
    error: str | None = None


def sample_manifest(
    root: Path, classes: Sequence[str], per_class: int, seed: int, out: Path
) -> None:
    """Split a seeded sample of ``per_class`` files per class (only those files are scanned)."""
    by_class: dict[str, list[Path]] = {label: [] for label in classes}
    for path in list_class_files(root, classes):
        label = canonical_class(path.relative_to(root).parts[0])
        if label in by_class and not path.name.startswith("."):
            by_class[label].append(path)
    rng = random.Random(f"leukoscope-sample:{seed}")
    chosen = sorted(p for files in by_class.values() for p in rng.sample(files, per_class))
    records = scan_files(root, chosen)
    result = assign_splits(records, classes, seed=seed, val=VAL_FRACTION, test=TEST_FRACTION)
    write_manifest(result, root, out)


def task_manifest(root: Path, task: str, plan: StudyPlan, out_dir: Path) -> Path:
    """The task's split manifest, made once and reused on later runs."""
    manifest = out_dir / task / "manifest.csv"
    if manifest.is_file():
        return manifest
    classes = TASKS[task]
    if plan.per_class is not None:
        sample_manifest(root, classes, plan.per_class, SPLIT_SEED, manifest)
    else:
        result = split_folder(root, classes, seed=SPLIT_SEED, val=VAL_FRACTION, test=TEST_FRACTION)
        write_manifest(result, root, manifest)
    return manifest


def run_arch(
    task: str,
    arch: str,
    manifest: Path,
    plan: StudyPlan,
    out_dir: Path,
    progress: ProgressFactory,
) -> ArchResult:
    """Train (or resume, or skip when finished) and score one arch on one task."""
    run_dir = out_dir / task / arch
    result = ArchResult(task, arch)
    try:
        trained = train(
            TrainConfig(
                manifest=manifest,
                arch=arch,
                profile=plan.profile,
                out=run_dir,
                resume=True,
                epochs=plan.epochs,
                image_size=plan.image_size,
                weights_file=plan.weights_files.get(arch),
                seed=SPLIT_SEED,
            ),
            progress=progress,
        )
        result.best_val, result.epochs = trained.best, len(trained.history)
        result.wall_seconds = trained.wall_seconds
        test_dir = run_dir / "test"
        metrics_path = test_dir / "metrics.json"
        if not metrics_path.is_file():
            with progress(f"Testing {arch} on {task}", None) as advance:
                evaluate_model(
                    run_dir,
                    lambda classes: read_manifest(manifest, "test", classes)[0],
                    f"{manifest} (test split)",
                    test_dir,
                    options=plan.evaluate,
                    advance=advance,
                )
        result.metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except LeukoscopeError as exc:
        result.error = str(exc)
        logger.error("%s on %s: %s", arch, task, exc)
    return result


def run_study(
    root: Path,
    out_dir: Path,
    plan: StudyPlan,
    *,
    progress: ProgressFactory = no_progress,
) -> list[ArchResult]:
    """Run the plan; write and return the comparison (``out_dir/comparison.md``)."""
    results = []
    for task in plan.tasks:
        manifest = task_manifest(root, task, plan, out_dir)
        results += [run_arch(task, arch, manifest, plan, out_dir, progress) for arch in plan.archs]
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(results, plan))
    return results


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def comparison_markdown(results: Sequence[ArchResult], plan: StudyPlan) -> str:
    """The study's accuracy beside ours, one table per task."""
    lines = [
        "# Reference study vs leukoscope",
        "",
        f"Protocol: {plan.image_size} px, GAP -> dense 256 ReLU -> softmax head, "
        f"profile `{plan.profile}`; split seed {SPLIT_SEED}: "
        f"{100 - 100 * (VAL_FRACTION + TEST_FRACTION):.0f}% train, "
        f"{100 * VAL_FRACTION:.0f}% validation, {100 * TEST_FRACTION:.0f}% held-out test"
        + (f"; sample of {plan.per_class} images per class" if plan.per_class else "")
        + ". Our numbers are on our test split, with 95% bootstrap intervals.",
        "",
    ]
    for task in dict.fromkeys(r.task for r in results):
        lines += [
            f"## {task} ({len(TASKS[task])} classes)",
            "",
            "| arch | study accuracy | our accuracy (95% CI) | our macro-F1 (95% CI) "
            "| test images | epochs | train time | ms/image (batch 1) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in (r for r in results if r.task == task):
            study = STUDY_ACCURACY.get(r.arch) if task == STUDY_TASK else None
            study_text = _percent(study) if study is not None else "—"
            if r.metrics is None:
                lines.append(f"| {r.arch} | {study_text} | not run: {r.error} | | | | | |")
                continue
            m, ci = r.metrics, r.metrics["bootstrap_95ci"]
            timing = m.get("timing")
            latency = f"{timing['batch1_ms_median']:.1f}" if timing else "—"
            lines.append(
                f"| {r.arch} | {study_text} "
                f"| {_percent(m['accuracy'])} ({_percent(ci['accuracy'][0])}-"
                f"{_percent(ci['accuracy'][1])}) "
                f"| {m['macro_f1']:.3f} ({ci['macro_f1'][0]:.3f}-{ci['macro_f1'][1]:.3f}) "
                f"| {m['n_images']} | {r.epochs} | {r.wall_seconds / 60:.1f} min "
                f"| {latency} |"
            )
        lines.append("")
    return "\n".join(lines)


def failures(results: Sequence[ArchResult], plan: StudyPlan) -> list[str]:
    """Why the quick check fails: archs below ``min_accuracy_ratio`` × chance, or not run."""
    if plan.min_accuracy_ratio is None:
        return []
    problems = []
    for r in results:
        chance = 1 / len(TASKS[r.task])
        if r.metrics is None:
            problems.append(f"{r.arch} on {r.task} did not run: {r.error}")
        elif r.metrics["accuracy"] < plan.min_accuracy_ratio * chance:
            problems.append(
                f"{r.arch} on {r.task}: test accuracy {r.metrics['accuracy']:.3f} is below "
                f"{plan.min_accuracy_ratio:g} x chance ({plan.min_accuracy_ratio * chance:.2f})"
            )
    return problems
