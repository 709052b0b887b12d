"""The model as the server uses it: batched prediction of uploads, Grad-CAM heatmaps, and the
model renormalised on a sample's stored cells.

One lock serialises model use. Grad-CAM hooks the network's layers while it runs, so a
prediction running beside it would feed those hooks; and on a CPU one forward pass already
uses every core, so running two at once only adds contention. Decoding, the database and
everything else still run concurrently in the server's thread pool.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import UploadFile
from PIL import Image

from leukoscope.cells.crops import FieldCell, field_cells
from leukoscope.cells.fields import CellBox
from leukoscope.data.preprocess import SCALE_CELLS, ScaleEstimate, spread
from leukoscope.errors import LeukoscopeError
from leukoscope.inference.explain import gradcam_overlay
from leukoscope.inference.fields import classify_cells
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.inference.shift import SAMPLE_CELLS, renormalised_or_why
from leukoscope.models import ModelCard
from leukoscope.service.schemas import RejectedFile
from leukoscope.service.uploads import Upload, decode_bounded, read_upload

BATCH = 32
BATCH_PIXELS = 64_000_000
"""A batch is classified when it reaches BATCH images or BATCH_PIXELS decoded pixels
(about 200 MB of RGB), whichever comes first: this bounds the memory of a large request."""


@dataclass(frozen=True)
class StoredCell:
    """A sample's cell as stored, to be classified again.

    Attributes
    ----------
    id, name, sha256 : str
        The cell's id, its name as shown, and its image's sha256.
    data : bytes
        The stored image: an uploaded cell image, or the crop cut from a field.
    box : CellBox or None
        Where a cell cut from a field is in it (None: uploaded as a cell image).
    counted : bool
        Not excluded from the differential (an artefact or a duplicate is classified again
        but not renormalised on).
    """

    id: str
    name: str
    sha256: str
    data: bytes
    box: CellBox | None
    counted: bool


@dataclass(frozen=True)
class Renormalised:
    """A sample's cells classified again by the model renormalised on them."""

    model_sha256: str
    cells: int
    """How many cells the statistics were re-estimated on."""
    adaptation: dict[str, Any]
    """The renormalised model card's adaptation record."""
    predictions: dict[str, Prediction]
    """The renormalised model's call on each cell, by cell id."""
    magnification: ScaleEstimate | None
    """What the uploaded cell images were rescaled by, measured on all of them; None when it
    measured too few cells to keep (:meth:`ModelRunner.settles`)."""


class ModelRunner:
    """A loaded :class:`Predictor` shared by all requests."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._lock = threading.Lock()

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.predictor.classes)

    @property
    def card(self) -> ModelCard:
        return self.predictor.card

    @property
    def arch(self) -> str:
        return self.card.arch

    @property
    def name(self) -> str:
        """The released model's name (``leukoscope release --name``), else its architecture."""
        release = self.card.release
        return release.name if release is not None else self.arch

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def classify(
        self,
        files: Sequence[UploadFile],
        *,
        max_bytes: int,
        max_pixels: int,
        scale: ScaleEstimate | None = None,
        earlier: Sequence[bool] = (),
    ) -> tuple[list[tuple[Upload, Prediction]], list[RejectedFile], ScaleEstimate | None]:
        """Decode and classify ``files`` in batches; unusable files come back as rejected.

        The files are taken as one sample, rescaled by ``scale`` (the sample's, when an earlier
        upload measured it), else by their own magnification (:meth:`measure`); the scale used
        is returned with them (None when no file was usable). ``earlier`` holds the model's
        uncertain flags on the sample's stored cells: with a fallback model, whether the
        sample looks shifted (nothing referred) is judged on them and the files' own
        (:meth:`~leukoscope.inference.predictor.Predictor.predict_images`).
        """
        done: list[tuple[Upload, Prediction]] = []
        rejected: list[RejectedFile] = []
        batch: list[tuple[Upload, Image.Image]] = []
        scale = scale or self.measure(files, max_bytes=max_bytes, max_pixels=max_pixels)
        for index, file in enumerate(files):
            result = read_upload(file, index, max_bytes=max_bytes, max_pixels=max_pixels)
            if isinstance(result, RejectedFile):
                rejected.append(result)
                continue
            batch.append(result)
            if len(batch) == BATCH or sum(u.width * u.height for u, _ in batch) >= BATCH_PIXELS:
                scale = self._predict(batch, rejected, done, scale, earlier)
                batch = []
        if batch:
            scale = self._predict(batch, rejected, done, scale, earlier)
        return done, rejected, scale

    def measure(
        self, files: Sequence[UploadFile], *, max_bytes: int, max_pixels: int
    ) -> ScaleEstimate | None:
        """The magnification of up to :data:`~leukoscope.data.preprocess.SCALE_CELLS` of
        ``files`` spread through them, as ``predict`` measures a sample
        (:meth:`~leukoscope.inference.predictor.Predictor.scale_of_images`), decoded within
        :data:`BATCH_PIXELS`; None when none is readable. The files are left to be read again.

        Spread, not the first ones: files come in the order a person picked them, often a
        class at a time. Uploaded 200 files at a time in class order, the 8-class
        EfficientNet's PBC test split scored 97.94% when its first 32 files (all basophils)
        set the sample's magnification (``benchmarks/samples.py --web``).
        """
        images: list[Image.Image] = []
        pixels = 0
        for index in spread(range(len(files)), SCALE_CELLS):
            result = read_upload(files[index], index, max_bytes=max_bytes, max_pixels=max_pixels)
            files[index].file.seek(0)
            if isinstance(result, RejectedFile):
                continue
            upload, image = result
            pixels += upload.width * upload.height
            if images and pixels > BATCH_PIXELS:
                break
            images.append(image)
        if not images:
            return None
        with self._lock:
            return self.predictor.scale_of_images(images)

    def settles(self, scale: ScaleEstimate) -> bool:
        """Whether ``scale`` was measured on enough cells to stand for a sample's later
        uploads (never, for a model that rescales nothing: there is nothing to keep)."""
        sample_scale = self.card.preprocessing.sample_scale
        return sample_scale is not None and scale.cells >= sample_scale.min_cells

    def _predict(
        self,
        batch: Sequence[tuple[Upload, Image.Image]],
        rejected: list[RejectedFile],
        done: list[tuple[Upload, Prediction]],
        scale: ScaleEstimate | None,
        earlier: Sequence[bool],
    ) -> ScaleEstimate:
        """Classify ``batch`` into ``done`` and ``rejected``, rescaled by ``scale`` (by default
        the batch's own), judged for shift with the ``earlier`` flags and those of ``done``;
        returns the scale used."""
        uploads = [upload for upload, _ in batch]
        images = [image for _, image in batch]
        before = [*earlier, *(prediction.uncertain for _, prediction in done)]
        with self._lock:
            scale = scale or self.predictor.scale_of_images(images)
            predictions = self.predictor.predict_images(
                images, [upload.name for upload in uploads], scale, earlier=before
            )
        for upload, prediction in zip(uploads, predictions, strict=True):
            if prediction.error is None:
                done.append((upload, prediction))
            else:
                rejected.append(RejectedFile(name=upload.name, status=422, error=prediction.error))
        return scale

    def classify_field(self, rgb: np.ndarray, name: str) -> list[tuple[FieldCell, Prediction]]:
        """Every white cell of a decoded field, cut out, with the model's call on it (cells on
        the field's edge flagged uncertain: see :mod:`leukoscope.inference.fields`)."""
        cells = field_cells(rgb)
        with self._lock:
            results = classify_cells(self.predictor, cells, name)
        return [(cell, result.prediction) for cell, result in zip(cells, results, strict=True)]

    def renormalise(
        self, cells: Sequence[StoredCell], data: str, *, max_pixels: int
    ) -> Renormalised | str:
        """The sample ``cells`` classified again by the model renormalised on them, as
        ``predict`` renormalises a shifted sample (see
        :func:`~leukoscope.inference.shift.renormalised_or_why`); or why not.

        Uploaded cell images are rescaled by the magnification measured on all of them (the
        sample keeps it for later uploads: every cell is classified again here, so the sample
        stays at one magnification, measured on more cells than its first upload had); cells
        cut from fields are not rescaled, and cells on a field's edge stay flagged. Images are
        decoded when they are needed, at most :data:`BATCH` at a time to classify them, so
        that a large sample never sits decoded in memory. The model lock is held throughout:
        10-20 s for samples of 100-300 cells on a 2-core Xeon, during which other requests
        wait.

        Raises
        ------
        LeukoscopeError
            A stored cell could not be decoded or classified again.
        """

        def decoded(chosen: Sequence[StoredCell]) -> list[Image.Image]:
            return [decode_bounded(c.data, name=c.name, max_pixels=max_pixels) for c in chosen]

        images = [cell for cell in cells if cell.box is None]
        counted = [cell for cell in cells if cell.counted]
        chosen = spread(counted, SAMPLE_CELLS)
        with self._lock:
            predictor = self.predictor
            scale = predictor.scale_of_images(decoded(spread(images, SCALE_CELLS)))

            def make() -> Predictor:
                from leukoscope.training.adapt import renormalised_for_images

                return renormalised_for_images(
                    predictor,
                    decoded(chosen),
                    [scale.factor if cell.box is None else 1.0 for cell in chosen],
                    [(cell.name, cell.sha256) for cell in chosen],
                    data=data,
                    command="renormalised on a sample's cells in the web app (leukoscope serve)",
                )

            renormalised = renormalised_or_why(predictor, len(counted), make)
            if isinstance(renormalised, str):
                return renormalised
            predictions: dict[str, Prediction] = {}
            for start in range(0, len(cells), BATCH):
                batch = cells[start : start + BATCH]
                crops = [cell for cell in batch if cell.box is None]
                calls = renormalised.predict_images(
                    decoded(crops), [cell.name for cell in crops], scale
                )
                found = [cell for cell in batch if cell.box is not None]
                cut = [
                    FieldCell(box, np.asarray(image))
                    for box, image in zip(
                        [c.box for c in found if c.box], decoded(found), strict=True
                    )
                ]
                calls += [r.prediction for r in classify_cells(renormalised, cut, data)]
                predictions.update(zip([c.id for c in crops + found], calls, strict=True))
        failed = [(c.name, predictions[c.id].error) for c in cells if predictions[c.id].error]
        if failed:
            name, error = failed[0]
            raise LeukoscopeError(f"{name}: could not be classified again: {error}")
        adaptation = renormalised.card.adaptation
        return Renormalised(
            model_sha256=renormalised.card.sha256,
            cells=adaptation.renormalised if adaptation else 0,
            adaptation=dataclasses.asdict(adaptation) if adaptation else {},
            predictions=predictions,
            magnification=scale if self.settles(scale) else None,
        )

    def heatmap_png(self, image: Image.Image, target: str | None) -> bytes:
        """The Grad-CAM overlay for ``target`` (default: the predicted class) as PNG bytes."""
        with self._lock:
            overlay = gradcam_overlay(self.predictor, image, target)
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        return buffer.getvalue()
