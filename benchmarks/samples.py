"""Labelled sets classified as one sample each, the way ``predict`` and ``differential`` do it.

``benchmarks/external.py`` scores a model as it is (or always renormalised). A user's
``predict`` does more: it rescales the sample to the training magnification, checks whether the
sample as a whole looks unlike the training data, and if so classifies it again with the model
renormalised on it (``--renormalise``, the default; :func:`leukoscope.training.adapt.
renormalised_for_sample`). This runs that very path (``leukoscope.cli.console.classify_paths``)
on every labelled set under ``--external`` (each folder's ``images/``) and on each model's own
PBC test split (when its manifest is at ``--manifests``), with ``--renormalise`` and without,
and scores the calls against the folders' labels: accuracy, share flagged uncertain, accuracy of
the cells kept, whether the sample was called shifted, the cells renormalised on, and seconds.

With ``--web`` each external set is uploaded instead to the web app (in this process, on a
temporary SQLite database) as one sample of cell images, and scored as uploaded and after a
reviewer's ``POST /api/samples/{id}/renormalise`` (which refuses a sample that does not look
shifted, such as the PBC test split), with the seconds each took. Each also says how many
cells a person must call before sign-off (``to_review``: the unidentified ones and, on a
shifted sample, every other one too) and how many would be signed on the model's word alone
(``unreviewed``), with how many of those are wrong (``unreviewed_wrong``).

With ``--fields`` each image is taken as a field image instead (``predict --fields``: its
white cells located, cut out at the training magnification and classified, and a shifted
sample renormalised on those cells), on the external sets only (locating every PBC test image
as a field would take most of an hour). An image counts as right when the cell found nearest
its centre gets its folder's class; an image with no cell found counts as wrong.

The external sets measure; they never train a released model.

Run: .venv/bin/python benchmarks/samples.py [--models models/a models/b ...]
       [--external ../shared/data/external] [--manifests runs/manifests] [--fields | --web]
       [--out benchmarks/results/samples.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from external import add_model_options, models_or_released, released_manifest, samples_in
from PIL import Image
from results_file import write_results

from leukoscope.cli.console import Classified, classify_paths
from leukoscope.data.datasets import Sample, read_manifest
from leukoscope.inference.predictor import Prediction, Predictor


def scored(
    predictor: Predictor, samples: list[Sample], renormalise: bool, fields: bool = False
) -> dict[str, Any]:
    """``samples`` classified as one sample by ``predictor`` as ``predict`` does it (with
    ``fields``, as ``predict --fields``), scored against their labels (class indices of the
    predictor's classes)."""
    start = time.perf_counter()
    result = classify_paths(
        predictor, [s.path for s in samples], 64, 2, fields=fields, renormalise=renormalise
    )
    seconds = time.perf_counter() - start
    truth = {str(s.path): predictor.classes[s.label] for s in samples}
    found = central_calls(result) if fields else result.predictions
    calls = [(p.label == truth[p.source], p.uncertain) for p in found if p.label]
    scores = {
        **_scores(calls, len(samples)),
        "shifted": None if result.shift is None else result.shift.shifted,
        "renormalised_cells": result.renormalised,
        "magnification": None if result.magnification is None else result.magnification.factor,
        "seconds": round(seconds, 1),
    }
    if fields:
        scores["images_without_cells"] = result.fields_without_cells
    return scores


def _scores(calls: list[tuple[bool, bool]], n_images: int) -> dict[str, Any]:
    """Accuracy, share flagged and accuracy of the kept cells, from ``(right, uncertain)`` of
    each call; an image without a call counts as wrong and flagged."""
    kept = [right for right, uncertain in calls if not uncertain]
    return {
        "n_images": n_images,
        "accuracy": round(sum(right for right, _ in calls) / n_images, 4),
        "uncertain_share": round(1 - len(kept) / n_images, 4),
        "accuracy_kept": round(sum(kept) / len(kept), 4) if kept else None,
    }


def scored_in_web_app(model: Path, samples: list[Sample], classes: list[str]) -> dict[str, Any]:
    """``samples`` uploaded to the web app as one sample, scored as uploaded and renormalised
    by the reviewer's action (see the module docstring)."""
    from fastapi.testclient import TestClient

    from leukoscope.service.app import create_app
    from leukoscope.service.settings import Settings

    truth = {f"{k}{s.path.suffix}": classes[s.label] for k, s in enumerate(samples)}

    def score(detail: dict[str, Any], seconds: float) -> dict[str, Any]:
        cells = detail["cells"]
        calls = [
            (c["prediction"]["label"] == truth[c["original_name"]], c["prediction"]["uncertain"])
            for c in cells
        ]
        differential = detail["differential"]
        shift = differential["shift"]
        # What a sign-off would count on the model's word alone: the confident calls, unless
        # the sample looks shifted (then a person must confirm or correct every one of them).
        unreviewed = [] if differential["to_confirm"] else [c for c in cells if c["label"]]
        return {
            **_scores(calls, len(samples)),
            "shifted": shift and shift["shifted"],
            "to_review": detail["unidentified_count"] + differential["to_confirm"],
            "unreviewed": len(unreviewed),
            "unreviewed_wrong": sum(c["label"] != truth[c["original_name"]] for c in unreviewed),
            "seconds": round(seconds, 1),
        }

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"model_path": model, "data_dir": Path(tmp)})
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
            sample_id = client.post("/api/samples", json={"name": "benchmark"}).json()["id"]
            named = list(zip(truth, samples, strict=True))
            start = time.perf_counter()
            for first in range(0, len(named), settings.max_files):
                files = [
                    ("files", (name, sample.path.read_bytes(), "application/octet-stream"))
                    for name, sample in named[first : first + settings.max_files]
                ]
                response = client.post(f"/api/samples/{sample_id}/cells", files=files)
                response.raise_for_status()
            uploaded = score(
                client.get(f"/api/samples/{sample_id}").json(), time.perf_counter() - start
            )
            start = time.perf_counter()
            response = client.post(
                f"/api/samples/{sample_id}/renormalise", json={"reviewer": "benchmark"}
            )
            seconds = time.perf_counter() - start
            if response.status_code != 200:
                return {
                    "as_uploaded": uploaded,
                    "renormalised": {"refused": response.json()["error"]},
                }
            detail = response.json()
            renormalised = score(detail, seconds) | {
                "renormalised_cells": detail["renormalisations"][-1]["cells"]
            }
    return {"as_uploaded": uploaded, "renormalised": renormalised}


def central_calls(result: Classified) -> list[Prediction]:
    """Of each field image's cells, the one whose box centre is nearest the image's centre."""
    best: dict[str, tuple[float, Prediction]] = {}
    for prediction, box in zip(result.predictions, result.boxes or [], strict=True):
        if box is None:  # an unreadable image
            continue
        with Image.open(prediction.source) as image:
            width, height = image.size
        distance = float(
            np.hypot((box.x_min + box.x_max - width) / 2, (box.y_min + box.y_max - height) / 2)
        )
        if prediction.source not in best or distance < best[prediction.source][0]:
            best[prediction.source] = (distance, prediction)
    return [prediction for _, prediction in best.values()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add_model_options(parser)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--fields", action="store_true", help="each image as a field image")
    modes.add_argument("--web", action="store_true", help="each set as a web-app sample")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/samples.json"))
    args = parser.parse_args()
    models = models_or_released(args.models)
    results: dict[str, Any] = {}
    for model in models:
        predictor = Predictor.load(model)
        row: dict[str, Any] = {}
        sets: dict[str, list[Sample] | str] = {
            folder.parent.name: samples_in(folder, predictor.classes)
            for folder in sorted(args.external.glob("*/images"))
        }
        if args.fields:
            sets["pbc_test"] = "not run as fields (see the docstring)"
        else:
            manifest = released_manifest(predictor.card, args.manifests, model)
            sets["pbc_test"] = (
                manifest
                if isinstance(manifest, str)
                else read_manifest(manifest, "test", predictor.classes)[0]
            )
        for name, samples in sets.items():
            if isinstance(samples, str):
                row[name] = {"skipped": samples}
                continue
            if args.web:
                row[name] = scored_in_web_app(model, samples, list(predictor.classes))
            else:
                row[name] = {
                    "renormalised_if_shifted": scored(predictor, samples, True, args.fields),
                    "as_trained": scored(predictor, samples, False, args.fields),
                }
            print(model, name, row[name], flush=True)
        results[str(model)] = row
        write_results(args.out, "samples", fields=args.fields, web=args.web, results=results)


if __name__ == "__main__":
    main()
