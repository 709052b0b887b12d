"""``evaluate_model`` scores a shifted sample as ``predict`` classifies it: renormalised."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from leukoscope.data.datasets import Sample, read_manifest
from leukoscope.data.preprocess import UNSCALED
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation import evaluate as evaluate_module
from leukoscope.evaluation.evaluate import EvaluateOptions, evaluate_model
from leukoscope.inference.predictor import Predictor
from tests.inference.tiny import Tiny, build_cascade

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
    # A renormalisation that fails (say, the files changed since), or a second pass that finds
    # no image readable any more, scores the model as it is and says why, as predict keeps its
    # first calls.
    from leukoscope.training import adapt as adapt_module

    def fails(*args: object) -> None:
        raise LeukoscopeError("a.jpg: changed since it was classified")

    real_classified = evaluate_module._classified

    def files_gone(predictor: Predictor, paths: Sequence[Path], *args: Any) -> Any:
        if predictor.card.adaptation is not None:
            paths = [path.with_name("gone-" + path.name) for path in paths]
        return real_classified(predictor, paths, *args)

    failures = [
        (adapt_module, "renormalised_for_sample", fails, "a.jpg: changed since it was classified"),
        (evaluate_module, "_classified", files_gone, "none of the images could be read again"),
    ]
    for module, name, replacement, why in failures:
        with monkeypatch.context() as patch:
            patch.setattr(module, name, replacement)
            failed = evaluate_model(
                batchnorm.model_dir, samples_for, "val", tmp_path / name, options=OPTIONS
            )
        assert failed["renormalised_cells"] == 0 and failed["accuracy"] == as_is["accuracy"]
        assert failed["not_renormalised"] == why
    kept = evaluate_model(
        batchnorm.model_dir,
        samples_for,
        "val",
        tmp_path / "c",
        options=dataclasses.replace(OPTIONS, renormalise=False),
    )
    assert kept["renormalised_cells"] == 0 and kept["accuracy"] == as_is["accuracy"]


def test_images_none_of_which_can_be_read_are_an_error_naming_them(
    batchnorm: Tiny, tmp_path: Path
) -> None:
    def samples_for(classes: Sequence[str]) -> list[Sample]:
        return [Sample(tmp_path / f"gone-{i}.jpg", 0) for i in range(3)]

    with pytest.raises(LeukoscopeError, match="gone: none of the 3 images is readable"):
        evaluate_model(batchnorm.model_dir, samples_for, "gone", tmp_path / "out", options=OPTIONS)


def test_a_model_with_a_fallback_is_scored_on_the_calls_the_user_gets(
    tiny: Tiny, untrained: Path, tmp_path: Path
) -> None:
    fast = build_cascade(tmp_path, tiny, untrained)

    def samples_for(classes: Sequence[str]) -> list[Sample]:
        return read_manifest(tiny.manifest, "test", classes)[0]

    predictor = Predictor.load(fast)
    classes = predictor.classes
    samples = samples_for(classes)
    calls = predictor.predict_paths([s.path for s in samples], scale=UNSCALED)
    right = [p.label == classes[s.label] for p, s in zip(calls, samples, strict=True)]
    options = dataclasses.replace(OPTIONS, rescale=False)
    metrics = evaluate_model(fast, samples_for, "test", tmp_path / "both", options=options)
    assert metrics["fallback_cells"] == sum(p.fallback for p in calls) > 0
    assert metrics["accuracy"] == pytest.approx(sum(right) / len(right))
    assert metrics["fallback"].endswith("slow")
