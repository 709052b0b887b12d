"""``evaluate_model`` scores a shifted sample as ``predict`` classifies it: renormalised."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from leukoscope.data.datasets import Sample, read_manifest
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from tests.inference.tiny import Tiny

OPTIONS = EvaluateOptions(resamples=20, throughput_runs=0, mistakes=0, heatmaps=False)


def test_a_shifted_sample_is_scored_renormalised_unless_asked_not_to(
    batchnorm: Tiny,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    def samples_for(classes: Sequence[str]) -> list[Sample]:
        return read_manifest(batchnorm.manifest, "val", classes)[0]

    as_is = evaluate_model(batchnorm.model_dir, samples_for, "val", tmp_path / "a", options=OPTIONS)
    assert as_is["renormalised_cells"] == 0  # the training data's own images: not shifted
    request.getfixturevalue("shifted_samples")
    shifted = evaluate_model(
        batchnorm.model_dir, samples_for, "val", tmp_path / "b", options=OPTIONS
    )
    n = shifted["n_images"]
    assert n >= 32 and shifted["renormalised_cells"] == n
    assert shifted["not_renormalised"] is None
    assert f"renormalised on {n} of them" in (tmp_path / "b" / "report.md").read_text()
    # A renormalisation that fails (say, the files changed since) scores the model as it is,
    # and says why, as predict keeps its first calls.
    from leukoscope.training import adapt as adapt_module

    def fails(*args: object) -> None:
        raise LeukoscopeError("a.jpg: changed since it was classified")

    with monkeypatch.context() as patch:
        patch.setattr(adapt_module, "renormalised_for_sample", fails)
        failed = evaluate_model(
            batchnorm.model_dir, samples_for, "val", tmp_path / "d", options=OPTIONS
        )
    assert failed["renormalised_cells"] == 0 and failed["accuracy"] == as_is["accuracy"]
    assert failed["not_renormalised"] == "a.jpg: changed since it was classified"
    kept = evaluate_model(
        batchnorm.model_dir,
        samples_for,
        "val",
        tmp_path / "c",
        options=dataclasses.replace(OPTIONS, renormalise=False),
    )
    assert kept["renormalised_cells"] == 0 and kept["accuracy"] == as_is["accuracy"]
