"""``leukoscope train`` and ``leukoscope evaluate`` through the real entry point."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from leukoscope.cli import main
from leukoscope.data.datasets import read_manifest
from leukoscope.inference.predictor import Predictor
from leukoscope.models import load_card
from leukoscope.models.card import set_fallback
from tests.training.conftest import CLASSES, shape_image, tiny_train_args, write_dataset


def run_cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``leukoscope ARGS`` in-process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["leukoscope", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return int(stop.value.code or 0), out.out, out.err


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOSCOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), per_class=12)


@pytest.fixture(scope="module")
def run_dir(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by ``leukoscope train`` (random init: the pipeline, not accuracy)."""
    out = tmp_path_factory.mktemp("run")
    sys.argv, old = ["leukoscope", *tiny_train_args(manifest, out)], sys.argv
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = old
    assert stop.value.code == 0
    return out


def test_train_writes_the_model_and_refuses_to_overwrite_it(
    run_dir: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = load_card(run_dir / "model_card.json")
    assert card.classes == CLASSES and card.preprocessing.input_size == 48
    assert (run_dir / "history.csv").is_file() and (run_dir / "train.log").is_file()
    code, _, err = run_cli(
        ["train", "--manifest", manifest, "--arch", "squeezenet1_1", "--out", run_dir], capsys
    )
    assert code == 1 and "--resume" in err


def test_evaluate_on_the_manifest_test_split(
    run_dir: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--model", run_dir, "--manifest", manifest, "--split", "test"]
    code, stdout, _ = run_cli([*args, "--out", out, "--bootstrap", 50, "--timing-runs", 2], capsys)
    assert code == 0 and "| macro avg |" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "per_class", "bootstrap_95ci"):
        assert key in metrics
    assert metrics["n_images"] == 9 and metrics["classes"] == list(CLASSES)
    assert metrics["skipped"] == []
    # The confusion matrix is exactly that of the model's own predictions on the test split.
    predictor = Predictor.load(run_dir, backend="torch")
    samples, _ = read_manifest(manifest, "test", predictor.classes)
    outputs = predictor.outputs_for_paths([s.path for s in samples], workers=0)
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, ([s.label for s in samples], outputs.logits.argmax(1)), 1)
    assert metrics["confusion_matrix"] == expected.tolist()
    assert metrics["accuracy"] == pytest.approx(np.trace(expected) / 9)
    ci = metrics["bootstrap_95ci"]
    assert ci["resamples"] == 50 and ci["accuracy"][0] <= metrics["accuracy"] <= ci["accuracy"][1]
    timing = metrics["timing"]
    assert timing["batch1_runs"] == 2 and timing["batch1_ms_median"] > 0
    assert timing["throughput_images_per_s"] > 0 and timing["machine"]["device"] == "cpu"
    report = (out / "report.md").read_text()
    assert report.count("| accuracy |") == 1
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # Calibration and abstention on these images (the run is not calibrated: T = 1).
    calibration = metrics["calibration"]
    assert calibration["temperature"] == 1.0 and calibration["n"] == 9
    assert calibration["ece_before"] == calibration["ece_after"] >= 0
    assert "## Calibration" in report and "not calibrated" in report
    for figure in ("reliability.png", "accuracy_coverage.png"):
        assert figure in report and (out / figure).read_bytes()[:4] == b"\x89PNG"
    # Every wrong prediction is listed (at most 12), most confident first, with heatmaps.
    mistakes = metrics["most_confident_mistakes"]
    assert len(mistakes) == min(12, 9 - int(np.trace(expected)))
    assert [m["confidence"] for m in mistakes] == sorted(
        (m["confidence"] for m in mistakes), reverse=True
    )
    assert "## Most confident mistakes" in report
    if mistakes:
        assert (out / "most_confident_mistakes.png").is_file()
        assert all((out / m["overlay"]).is_file() for m in mistakes)


def test_evaluate_a_folder_with_other_spellings_and_a_subset_of_classes(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    for i in range(3):
        (data / "Neutrophil").mkdir(parents=True, exist_ok=True)
        shape_image(2, 100 + i).save(data / "Neutrophil" / f"n{i}.png")
    for i in range(2):
        (data / "EOS").mkdir(exist_ok=True)
        shape_image(0, 200 + i).save(data / "EOS" / f"e{i}.png")
    (data / "Neutrophil" / "broken.jpg").write_bytes(b"")
    (data / "Platelet").mkdir()  # a class the model does not know: ignored
    shape_image(1, 300).save(data / "Platelet" / "p.png")

    out = tmp_path / "eval"
    code, _, _ = run_cli(
        [
            "evaluate",
            "--model",
            run_dir,
            "--data",
            data,
            "--out",
            out,
            "--timing-runs",
            0,
            "--bootstrap",
            50,
        ],
        capsys,
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == list(CLASSES)
    assert metrics["classes_evaluated"] == ["eosinophil", "neutrophil"]
    assert set(metrics["per_class"]) == {"eosinophil", "neutrophil"}
    assert metrics["n_images"] == 5
    assert [sum(row) for row in metrics["confusion_matrix"]] == [2, 0, 3]
    assert metrics["per_class"]["neutrophil"]["support"] == 3
    assert [Path(s["path"]).name for s in metrics["skipped"]] == ["broken.jpg"]
    assert "empty" in metrics["skipped"][0]["reason"]
    assert "timing" not in metrics


def test_evaluate_needs_exactly_one_data_source(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["evaluate", "--model", run_dir, "--out", tmp_path], capsys)
    assert code == 1 and "exactly one of --data" in err


def test_release_calibrates_evaluates_and_publishes(
    run_dir: Path, manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    (models / ".tiny-killed").mkdir(parents=True)  # staging left by a killed release
    args = ["release", run_dir, "--manifest", manifest, "--name", "tiny", "--views", "4"]
    code, stdout, err = run_cli([*args, "--models-dir", models], capsys)
    assert code == 0, err
    released = models / "tiny"
    card = load_card(released / "model_card.json")
    assert card.calibration and card.abstention and card.test_metrics and card.release
    assert card.calibration.temperature > 0 and card.abstention.threshold is not None
    assert card.test_metrics.n_images == 9 and card.release.name == "tiny"
    assert card.release.manifest_sha256 and "--views 4" in card.release.command
    assert card.test_time_views == 4
    report = (released / "evaluation" / "report.md").read_text()
    assert "## Calibration" in report and "not calibrated" not in report
    assert "averaged over 4 turned views" in report
    # No heatmaps: they are images derived from the data and would be published with the model.
    assert not list((released / "evaluation").glob("*mistake*.png"))
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert "Released" in stdout and "macro-F1" in stdout
    # Released again over a model with a fallback: the new card has none, and says so.
    shutil.copytree(released, models / "other")
    set_fallback(released, models / "other")
    code, stdout, err = run_cli([*args, "--models-dir", models], capsys)
    assert code == 0, err
    assert load_card(released / "model_card.json").fallback is None
    assert "had a fallback, ../other" in " ".join(stdout.split())
