"""``leukoscope reproduce``: the study protocol, the comparison table and the quick CI check."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from leukoscope.cli import main
from leukoscope.evaluation.evaluate import EvaluateOptions
from leukoscope.evaluation.study import (
    ArchResult,
    StudyPlan,
    comparison_markdown,
    failures,
    run_arch,
)
from leukoscope.models import weights
from leukoscope.training.trainer import no_progress
from tests.training.conftest import write_dataset


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty cache and no network: downloads fail as they do on CI."""
    monkeypatch.setenv("LEUKOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _has_squeezenet_weights() -> bool:
    return any(
        (folder / name).is_file()
        for folder in weights.squeezenet_h5_dirs()
        for name in weights.SQUEEZENET_H5_NAMES
    )


def test_unavailable_weights_are_reported_and_the_other_archs_go_on(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data", per_class=8)
    plan = StudyPlan(
        image_size=48, epochs=1, evaluate=EvaluateOptions(resamples=20, throughput_runs=0)
    )
    missing = run_arch("wbc5", "resnet50", manifest, plan, tmp_path / "out", no_progress)
    assert missing.metrics is None and "could not download" in (missing.error or "")
    results = [missing]
    if _has_squeezenet_weights():
        ran = run_arch("wbc5", "squeezenet1_1", manifest, plan, tmp_path / "out", no_progress)
        assert ran.error is None and ran.metrics is not None
        assert (tmp_path / "out" / "wbc5" / "squeezenet1_1" / "test" / "report.md").is_file()
        results.append(ran)
    table = comparison_markdown(results, plan)
    assert "| resnet50 | 94.0% | not run: could not download" in table
    if len(results) == 2:
        assert "| squeezenet1_1 | 99.2% | " in table


def test_quick_check_fails_below_twice_chance() -> None:
    plan = StudyPlan(min_accuracy_ratio=2.0)
    good = ArchResult("wbc5", "squeezenet1_1", metrics={"accuracy": 0.9})
    bad = ArchResult("wbc5", "efficientnet_lite0", metrics={"accuracy": 0.3})
    lost = ArchResult("pbc8", "resnet50", error="no weights")
    assert failures([good], plan) == []
    problems = failures([good, bad, lost], plan)
    assert len(problems) == 2
    assert "efficientnet_lite0" in problems[0] and "0.40" in problems[0]
    assert "resnet50" in problems[1] and "no weights" in problems[1]
    assert failures([bad], StudyPlan()) == []


@pytest.mark.skipif(not _has_squeezenet_weights(), reason="SqueezeNet ImageNet weights absent")
def test_quick_reproduce_on_a_real_sample_then_skips_finished_work(
    pbc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repro"
    argv = [
        "leukoscope",
        "reproduce",
        "--data",
        str(pbc_root),
        "--quick",
        "--per-class",
        "16",
        "--archs",
        "squeezenet1_1",
        "--out",
        str(out),
    ]
    for attempt in range(2):
        old, sys.argv = sys.argv, argv
        try:
            with pytest.raises(SystemExit) as stop:
                main()
        finally:
            sys.argv = old
        assert stop.value.code == 0, capsys.readouterr().err
        if attempt == 0:
            checkpoint = out / "wbc5" / "squeezenet1_1" / "checkpoint.safetensors"
            written = checkpoint.stat().st_mtime_ns
    assert checkpoint.stat().st_mtime_ns == written  # the second run trained nothing

    table = (out / "comparison.md").read_text()
    assert "| squeezenet1_1 | 99.2% |" in table and "## wbc5 (5 classes)" in table
    assert table in capsys.readouterr().out.replace("\r", "")
    metrics = json.loads((out / "wbc5" / "squeezenet1_1" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.4
    assert metrics["n_images"] == 5 * round(16 * 0.2)
