"""The predict, differential, explain, export, calibrate and ood-check commands, in process."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from leukoscope.cells import crops
from leukoscope.cells.crops import field_cells
from leukoscope.cli import console as console_module
from leukoscope.cli.app import app
from leukoscope.data.preprocess import SampleScale, to_noted_pixels
from leukoscope.errors import LeukoscopeError
from leukoscope.evaluation.ood import synthetic_ood_images
from leukoscope.inference.abstention import RENORMALISED_STATS_NAME
from leukoscope.inference.predictor import Predictor
from leukoscope.models import load_model
from leukoscope.models.card import update_card
from leukoscope.reports import differential as differential_report
from leukoscope.reports.differential import CellCall
from leukoscope.training import adapt as adapt_module
from leukoscope.training.adapt import renormalised_for_sample
from tests.cells.drawing import drawn_cell, smear
from tests.conftest import REPO, cell_image
from tests.inference.tiny import (
    Tiny,
    build_batchnorm,
    build_cascade,
    build_tiny,
    build_untrained,
    squeezenet_h5,
)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_untrained(tmp_path_factory.mktemp("cli-untrained"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    weights = squeezenet_h5()
    if weights is None:
        pytest.skip("keras-squeezenet ImageNet weights not found (set LEUKOSCOPE_WEIGHTS_DIR)")
    return build_tiny(tmp_path_factory.getbasetemp() / "tiny", weights)


@pytest.fixture
def model_copy(tmp_path: Path, tiny: Tiny) -> Path:
    """A copy of the tiny model that a test may change."""
    return Path(shutil.copytree(tiny.model_dir, tmp_path / "model"))


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def cells_folder(root: Path, n: int = 6) -> Path:
    """``n`` synthetic neutrophil-like cells in ``root`` (created)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cell_image(i, size=96, hue=(150, 80, 150)).save(root / f"cell_{i}.jpg")
    return root


def test_predict_lists_a_bad_file_and_carries_on(tmp_path: Path, untrained: Path) -> None:
    folder = cells_folder(tmp_path / "in")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "predictions.csv"
    result = invoke("predict", "--model", untrained, folder, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "1 unreadable file(s) skipped" in result.output
    assert "broken.jpg" in result.output
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 7
    broken = next(r for r in rows if r["source"].endswith("broken.jpg"))
    assert broken["label"] == "" and "broken.jpg" in broken["error"]
    assert {v for k, v in broken.items() if k not in ("source", "error")} == {""}
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] and r["runner_up"] for r in good)
    assert {"p_basophil", "p_neutrophil", "uncertain", "score"} <= set(rows[0])


def test_predict_json_with_glob_and_uncertain_flags(tmp_path: Path, tiny: Tiny) -> None:
    noise = tmp_path / "noise.png"
    synthetic_ood_images(n=1, size=96)["noise"][0].save(noise)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "p.json"
    pattern = str(tiny.manifest.parent / "images" / "eosinophil" / "test_0*.jpg")
    result = invoke("predict", "--model", tiny.model_dir, pattern, noise, broken, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["calibrated"] and report["summary"]["images"] == 10
    assert report["summary"]["unreadable"] == 1
    by_source = {Path(p["source"]).name: p for p in report["predictions"]}
    assert by_source["noise.png"]["uncertain"]
    unread = by_source["broken.png"]
    assert "broken.png" in unread["error"] and unread["probabilities"] == {}
    assert unread["label"] is None and unread["confidence"] is None
    assert sum(p["label"] == "eosinophil" for p in report["predictions"]) >= 6


def test_predict_refuses_an_unknown_output_format(tmp_path: Path, untrained: Path) -> None:
    result = invoke("predict", "--model", untrained, tmp_path, "--out", tmp_path / "p.xlsx")
    assert isinstance(result.exception, LeukoscopeError)


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_differential_writes_the_report(tmp_path: Path, tiny: Tiny, fmt: str) -> None:
    sample = tmp_path / "smear"
    sample.mkdir()
    for path, _ in tiny.split("test"):
        shutil.copy(path, sample / f"{path.parent.name}_{path.name}")
    (sample / "empty.jpg").write_bytes(b"")
    out = tmp_path / "report"
    result = invoke(
        "differential", "--model", tiny.model_dir, sample, "--out", out, "--format", fmt
    )
    assert result.exit_code == 0, result.output
    assert "not a diagnosis" in " ".join(result.output.split())
    differential = json.loads((out / "differential.json").read_text())
    counted = differential["white_cells_counted"] + differential["for_review"]["total"]
    assert counted == 32
    assert [u["source"] for u in differential["unreadable"]] == [str(sample / "empty.jpg")]
    assert "not a diagnosis" in (out / f"differential.{fmt}").read_text()
    assert len(list(csv.DictReader((out / "cells.csv").read_text().splitlines()))) == 33


@pytest.mark.parametrize("command", ["predict", "differential", "explain"])
def test_nothing_readable_is_an_error(tmp_path: Path, untrained: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (broken / "b.png").write_text("text")
    out = tmp_path / ("out.csv" if command == "predict" else "out")
    for folder, message in [(empty, "no image files found"), (broken, "none of the 2 image")]:
        result = invoke(command, "--model", untrained, folder, "--out", out)
        assert result.exit_code != 0, result.output
        assert message in str(result.exception)


def test_skipped_links_are_reported_and_gif_is_read(tmp_path: Path, untrained: Path) -> None:
    folder = cells_folder(tmp_path / "in", n=2)
    cell_image(9, size=96).convert("P").save(folder / "palette.gif")
    (folder / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    other = cells_folder(tmp_path / "other", n=1)
    (folder / "linked").symlink_to(other, target_is_directory=True)
    out = tmp_path / "predictions.csv"
    result = invoke("predict", "--model", untrained, folder, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dangling.jpg: link to" in text and "leads nowhere" in text
    assert "loop.jpg: link to" in text
    assert "linked: link to a folder, not followed" in text
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert sorted(Path(r["source"]).name for r in rows) == [
        "cell_0.jpg",
        "cell_1.jpg",
        "palette.gif",
    ]
    assert all(r["label"] for r in rows)


def test_differential_in_the_terminal_qualifies_weak_flags(
    tmp_path: Path, untrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flag whose interval overlaps the reference says so, as the Markdown and HTML do."""
    counts = {"neutrophil": 17, "lymphocyte": 2, "eosinophil": 1}
    weak = [CellCall(label, False) for label, n in counts.items() for _ in range(n)]
    real = differential_report.compute_differential
    monkeypatch.setattr(
        differential_report,
        "compute_differential",
        lambda _calls, classes, shift=None, **_: real(weak, classes, shift),
    )
    out = tmp_path / "report"
    folder = cells_folder(tmp_path / "in")
    result = invoke("differential", "--model", untrained, folder, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    flags = json.loads((out / "differential.json").read_text())["flags"]
    assert flags and not any(flag["definite"] for flag in flags)
    assert "(interval overlaps the reference)" in " ".join(result.output.split())


def test_explain_writes_overlays(tmp_path: Path, tiny: Tiny) -> None:
    images = cells_folder(tmp_path / "in")
    (images / "bad.png").write_text("x")
    out = tmp_path / "cams"
    result = invoke("explain", "--model", tiny.model_dir, images, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"cell_{i}_gradcam.png" for i in range(6)]
    assert "skipped" in result.output


def test_export_then_predict_with_onnx(tmp_path: Path, model_copy: Path) -> None:
    result = invoke("export", "--model", model_copy)
    assert result.exit_code == 0, result.output
    assert "(ok)" in result.output
    assert (model_copy / "model.onnx").is_file()
    out = tmp_path / "p.json"
    images = cells_folder(tmp_path / "in")
    result = invoke("predict", "--model", model_copy, images, "--out", out, "--backend", "onnx")
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert (written["backend"], written["precision"]) == ("onnx", "fp32")


def test_int8_export_needs_a_manifest(untrained: Path) -> None:
    result = invoke("export", "--model", untrained, "--int8")
    assert isinstance(result.exception, LeukoscopeError)


def test_int8_export_says_when_the_cpu_gains_nothing(
    tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("leukoscope.machine.has_int8_dot_product", lambda: False)
    out = tmp_path / "m.int8.onnx"
    args = ("export", "--model", tiny.model_dir, "--int8", "--onnx", out)
    result = invoke(*args, "--calibration-manifest", tiny.manifest, "--images-per-class", "4")
    assert result.exit_code == 0, result.output
    assert out.is_file() and "no int8 dot-product instructions" in result.output
    result = invoke(*args, "--calibration-manifest", tiny.manifest, "--full-range")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "computed as CPUs with VNNI or AMX compute it" in said
    assert "predict runs the fp32 export here" in said


def test_full_range_is_an_int8_option(tmp_path: Path, tiny: Tiny) -> None:
    result = invoke("export", "--model", tiny.model_dir, "--full-range")
    assert "--full-range is an option of --int8" in str(result.exception)


def test_bf16_is_an_fp32_option(tmp_path: Path, tiny: Tiny) -> None:
    result = invoke("export", "--model", tiny.model_dir, "--bf16", "--int8")
    assert "--bf16 is an option of fp32 exports" in str(result.exception)
    out = tmp_path / "m.onnx"
    result = invoke("export", "--model", tiny.model_dir, "--bf16", "--onnx", out)
    assert result.exit_code == 0 and "OpenVINO computes it in bf16" in result.output
    assert Predictor.load(out, backend="onnx").source == out  # ONNX Runtime: fp32 as ever


def test_calibrate_rewrites_the_card(tmp_path: Path, tiny: Tiny, model_copy: Path) -> None:
    report = tmp_path / "report"
    result = invoke(
        "calibrate",
        "--model",
        model_copy,
        "--manifest",
        tiny.manifest,
        "--target-coverage",
        "0.9",
        "--out",
        report,
        "--workers",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert "Temperature" in result.output
    card = load_model(model_copy)[1]
    assert card.abstention is not None and card.abstention.target_coverage == 0.9
    assert {"reliability.png", "accuracy_coverage.png", "calibration.md"} <= {
        p.name for p in report.iterdir()
    }


def test_calibrate_renormalised_only_keeps_the_calibration(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, model_copy: Path, tiny: Tiny
) -> None:
    model = tmp_path / "batchnorm"
    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm")
    shutil.copytree(source.model_dir, model)
    (model / RENORMALISED_STATS_NAME).unlink()
    update_card(model, renormalised_abstention=None)
    before = load_model(model)[1]
    result = invoke(
        "calibrate", "--model", model, "--manifest", source.manifest, "--renormalised-only"
    )
    assert result.exit_code == 0, result.output
    assert "renormalised model (for adapt --unlabelled)" in result.output
    assert "96 train and 80 val cells" in result.output
    after = load_model(model)[1]
    assert after.calibration == before.calibration and after.abstention == before.abstention
    assert after.renormalised_abstention == load_model(source.model_dir)[1].renormalised_abstention

    result = invoke(
        "calibrate", "--model", model_copy, "--manifest", tiny.manifest, "--renormalised-only"
    )
    assert isinstance(result.exception, LeukoscopeError)
    assert "no BatchNorm" in str(result.exception)


def test_ood_check_reports_catch_rates(tmp_path: Path, tiny: Tiny) -> None:
    data = tmp_path / "data"
    (data / "platelet").mkdir(parents=True)
    for i in range(3):
        cell_image(i, size=96, hue=(120, 60, 120)).save(data / "platelet" / f"p{i}.jpg")
    out = tmp_path / "ood.json"
    result = invoke(
        "ood-check", "--model", tiny.model_dir, "--data", data, "--n", "4", "--out", out
    )
    assert result.exit_code == 0, result.output
    rates = json.loads(out.read_text())["rates"]
    assert set(rates) == {"noise", "blank", "photo", "platelet"}
    assert rates["platelet"]["n"] == 3
    assert rates["noise"]["rate"] >= 0.75


def test_ood_check_needs_a_calibrated_model(untrained: Path) -> None:
    result = invoke("ood-check", "--model", untrained, "--n", "1")
    assert isinstance(result.exception, LeukoscopeError)


def test_scale_stores_the_training_cells_size_in_the_card(tiny: Tiny, model_copy: Path) -> None:
    result = invoke("scale", "--model", model_copy, "--manifest", tiny.manifest)
    assert result.exit_code == 0, result.output
    assert "stored in the model card" in result.output
    scale = load_model(model_copy)[1].preprocessing.sample_scale
    assert scale is not None and scale.cells > 0 and 0.3 < scale.cell_fraction < 0.8


def test_predict_rescales_a_magnified_sample_and_says_so(tmp_path: Path, model_copy: Path) -> None:
    card = load_model(model_copy)[1]
    update_card(
        model_copy,
        preprocessing=dataclasses.replace(card.preprocessing, sample_scale=SampleScale(0.3, 100)),
    )
    folder = tmp_path / "magnified"
    folder.mkdir()
    for i in range(8):  # cells half the side: 1.67 times the card's 0.3
        Image.fromarray(drawn_cell((120, 120), (60, 60), 60, seed=i)).save(folder / f"{i}.png")
    out = tmp_path / "predictions.csv"
    result = invoke("predict", "--model", model_copy, folder, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "Magnification:" in result.output and "rescaled by 1/1.6" in result.output
    result = invoke("differential", "--model", model_copy, folder, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "rescaled by 1/1.6" in result.output
    report = json.loads((tmp_path / "report" / "differential.json").read_text())
    assert report["magnification"]["cells"] == 8 and report["magnification"]["factor"] > 1.5
    markdown = (tmp_path / "report" / "differential.md").read_text()
    assert "Magnification: this sample's cells" in markdown
    # One cell is too few for a sample's median: used as it is.
    result = invoke("predict", "--model", model_copy, folder / "0.png", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Magnification:" not in result.output


def fields_folder(root: Path) -> Path:
    """Two field images (three white cells, one cut by the edge; none) and a broken file."""
    root.mkdir(parents=True, exist_ok=True)
    cells = [(200, 150, 90), (520, 300, 110), (980, 300, 100)]
    Image.fromarray(smear((1000, 560), cells, red_cells=40, red_diameter=60)).save(root / "a.png")
    Image.fromarray(smear((640, 400), [(-300, -300, 60)], red_cells=20)).save(root / "b.png")
    (root / "c.jpg").write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_predict_fields_gives_each_cell_its_box(
    tmp_path: Path, untrained: Path, suffix: str
) -> None:
    folder = fields_folder(tmp_path / "fields")
    out = tmp_path / f"p.{suffix}"
    result = invoke("predict", "--model", untrained, folder, "--fields", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Field images without a white cell: 1" in result.output
    if suffix == "csv":
        rows = list(csv.DictReader(out.read_text().splitlines()))
    else:
        rows = [p | (p["box"] or {}) for p in json.loads(out.read_text())["predictions"]]
    cells = [r for r in rows if r["source"].endswith("a.png")]
    assert len(cells) == 3 and all(r["label"] for r in cells)
    assert sorted(int(r["x_min"]) < 200 < int(r["x_max"]) for r in cells) == [False, False, True]
    (edge,) = [r for r in cells if str(r["edge"]) == "1"]
    assert str(edge["uncertain"]).lower() == "true" and "edge" in edge["note"]
    (broken,) = [r for r in rows if r["source"].endswith("c.jpg")]
    assert "not an image" in broken["error"] and not broken.get("x_min")


def test_differential_fields_counts_the_cells_of_the_fields(
    tmp_path: Path, untrained: Path
) -> None:
    folder = fields_folder(tmp_path / "fields")
    out = tmp_path / "report"
    result = invoke("differential", "--model", untrained, folder, "--fields", "--out", out)
    assert result.exit_code == 0, result.output
    differential = json.loads((out / "differential.json").read_text())
    assert differential["white_cells_counted"] == 2 and differential["for_review"]["total"] == 1
    rows = list(csv.DictReader((out / "cells.csv").read_text().splitlines()))
    assert len(rows) == 4 and {"x_min", "edge"} <= set(rows[0])


def test_a_shifted_sample_is_classified_again_by_the_model_renormalised_on_it(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    tiny: Tiny,
    monkeypatch: pytest.MonkeyPatch,
    shifted_samples: None,
) -> None:
    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir
    cells = cells_folder(tmp_path / "cells", 40)
    out = tmp_path / "p.json"
    result = invoke("predict", cells, "--model", source, "--out", out)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Renormalising: 40 of 40 cells are flagged uncertain" in said
    assert "statistics on 40 of the sample's cells" in said
    written = json.loads(out.read_text())
    assert written["renormalised_cells"] == 40 and written["backend"] == "torch"
    assert written["summary"]["images"] == 40

    result = invoke("predict", cells, "--model", source, "--out", out, "--no-renormalise")
    assert result.exit_code == 0 and "Renormalising" not in result.output
    assert json.loads(out.read_text())["renormalised_cells"] == 0
    table = tmp_path / "p.csv"
    result = invoke("predict", cells, "--model", source, "--out", table, "--no-renormalise")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert len(rows) == 40 and {row["sample_shifted"] for row in rows} == {"true"}

    report = tmp_path / "report"
    result = invoke("differential", cells, "--model", source, "--out", report)
    assert result.exit_code == 0, result.output
    assert json.loads((report / "differential.json").read_text())["renormalised_cells"] == 40
    rendered = " ".join((report / "differential.md").read_text().split())
    assert "statistics were re-estimated on 40 of this sample's cells" in rendered

    # Too few cells, or a model without normalisation statistics: said, and the calls kept.
    few = cells_folder(tmp_path / "few", 10)
    result = invoke("predict", few, "--model", source, "--out", out)
    assert "Not renormalised: fewer than 32 readable cells" in " ".join(result.output.split())
    assert json.loads(out.read_text())["renormalised_cells"] == 0
    result = invoke("predict", cells, "--model", tiny.model_dir, "--out", out)
    assert "no normalisation statistics to re-estimate" in " ".join(result.output.split())

    # A renormalisation that fails keeps the first calls, and says why.
    def fails(*args: object) -> None:
        raise LeukoscopeError("cell_0.jpg: cannot read the image")

    monkeypatch.setattr(adapt_module, "renormalised_for_sample", fails)
    result = invoke("predict", cells, "--model", source, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Not renormalised: cell_0.jpg: cannot read" in " ".join(result.output.split())
    written = json.loads(out.read_text())
    assert written["renormalised_cells"] == 0 and written["summary"]["images"] == 40

    # So does a second pass that fails (say, every file went away meanwhile).
    monkeypatch.setattr(adapt_module, "renormalised_for_sample", renormalised_for_sample)
    real_classified = console_module.classified

    def first_pass_only(predictor: Predictor, *args: object, **kwargs: bool) -> object:
        if predictor.card.adaptation is not None:
            raise LeukoscopeError("none of the 40 image file(s) could be read")
        return real_classified(predictor, *args, **kwargs)

    monkeypatch.setattr(console_module, "classified", first_pass_only)
    result = invoke("predict", cells, "--model", source, "--out", out)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Not renormalised: classifying again failed: none of the 40" in said
    written = json.loads(out.read_text())
    assert written["renormalised_cells"] == 0 and written["summary"]["images"] == 40


def test_shifted_field_images_are_classified_again_by_the_model_renormalised_on_their_cells(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shifted_samples: None,
) -> None:
    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir
    folder = tmp_path / "fields"
    folder.mkdir()
    cells = [(x, y, 90) for x in (150, 400, 650, 900) for y in (150, 420)]  # none on the edge
    for seed in range(5):  # 40 white cells in all
        field = smear((1050, 570), cells, red_cells=40, red_diameter=60, seed=seed)
        Image.fromarray(field).save(folder / f"{seed}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "p.json"
    located: list[object] = []
    real = crops.locate_field
    monkeypatch.setattr(crops, "locate_field", lambda rgb: located.append(rgb) or real(rgb))
    result = invoke("predict", folder, "--fields", "--model", source, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(located) == 5  # each field once: the second pass cuts the cells where they were
    said = " ".join(result.output.split())
    assert "Renormalising: 40 of 40 cells are flagged uncertain" in said
    assert "statistics on 40 of the sample's cells" in said
    written = json.loads(out.read_text())
    assert written["renormalised_cells"] == 40
    calls = [p for p in written["predictions"] if p["label"]]
    assert len(calls) == 40 and all(p["box"] for p in calls)  # the same cells, boxes kept
    assert sum(bool(p["error"]) for p in written["predictions"]) == 1  # the broken field

    # The renormalised model is the one renormalise() makes of those very cells, as the
    # predictor sees them.
    fields = sorted(folder.glob("*.png"))
    predictor = Predictor.load(source)
    renormalised = adapt_module.renormalised_for_fields(predictor, fields)
    adaptation = renormalised.card.adaptation
    assert adaptation is not None and adaptation.renormalised == 40
    assert set(adaptation.files) == {str(f) for f in fields} and adaptation.magnification == 1.0
    config = predictor.card.preprocessing
    pixels = [
        to_noted_pixels(Image.fromarray(cell.rgb), config)[0]
        for field in fields
        for cell in field_cells(np.asarray(Image.open(field).convert("RGB")))
    ]
    expected = adapt_module.renormalise(
        predictor.model, predictor.card, torch.from_numpy(np.stack(pixels))
    ).state_dict()
    for name, value in renormalised.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)

    # Too few cells in the fields: said, and the first calls kept.
    few = tmp_path / "few"
    few.mkdir()
    (folder / "0.png").rename(few / "0.png")
    result = invoke("predict", few, "--fields", "--model", source, "--out", out)
    assert "Not renormalised: fewer than 32 readable cells" in " ".join(result.output.split())
    assert json.loads(out.read_text())["renormalised_cells"] == 0


def test_fallback_backs_a_model_and_predict_says_which_cells_it_classified(
    tmp_path: Path, tiny: Tiny, untrained: Path
) -> None:
    fast = build_cascade(tmp_path, tiny, untrained)
    assert invoke("fallback", "--model", fast, "--remove").exit_code == 0
    assert load_model(fast)[1].fallback is None
    result = invoke("fallback", "--model", fast, "--to", tmp_path / "slow")
    assert result.exit_code == 0, result.output
    assert "go to ../slow" in " ".join(result.output.split())
    out = tmp_path / "p.csv"
    images = tiny.manifest.parent / "images"
    assert invoke("predict", "--model", fast, images, "--out", out).exit_code == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    used = [row["fallback"] == "true" for row in rows]
    assert any(used) and not all(used)
    assert all(row["uncertain"] == "true" for row, u in zip(rows, used, strict=True) if u)
    neither = invoke("fallback", "--model", fast)
    assert "--to MODEL or --remove" in str(neither.exception)


def test_a_few_cells_start_in_onnx_runtime_whatever_the_arch(tmp_path: Path) -> None:
    model = REPO / "models" / "wbc5-efficientnet_lite0"  # OpenVINO first for a long job
    out = tmp_path / "p.json"
    result = invoke("predict", "--model", model, cells_folder(tmp_path / "cells", 3), "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["backend"] == "onnx"
