"""The model as the server uses it: batched prediction of uploads and Grad-CAM heatmaps.

One lock serialises model use. Grad-CAM hooks the network's layers while it runs, so a
prediction running beside it would feed those hooks; and on a CPU one forward pass already
uses every core, so running two at once only adds contention. Decoding, the database and
everything else still run concurrently in the server's thread pool.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import numpy as np
from fastapi import UploadFile
from PIL import Image

from leukoscope.cells.crops import FieldCell, field_cells
from leukoscope.data.preprocess import ScaleEstimate
from leukoscope.inference.explain import gradcam_overlay
from leukoscope.inference.fields import classify_cells
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.models import ModelCard
from leukoscope.service.schemas import RejectedFile
from leukoscope.service.uploads import Upload, read_upload

BATCH = 32
BATCH_PIXELS = 64_000_000
"""A batch is classified when it reaches BATCH images or BATCH_PIXELS decoded pixels
(about 200 MB of RGB), whichever comes first: this bounds the memory of a large request."""


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
        self, files: Sequence[UploadFile], *, max_bytes: int, max_pixels: int
    ) -> tuple[list[tuple[Upload, Prediction]], list[RejectedFile]]:
        """Decode and classify ``files`` in batches; unusable files come back as rejected.

        The files are taken as one sample: the first batch's magnification (see
        :meth:`~leukoscope.inference.predictor.Predictor.scale_of_images`) rescales them all.
        """
        done: list[tuple[Upload, Prediction]] = []
        rejected: list[RejectedFile] = []
        batch: list[tuple[Upload, Image.Image]] = []
        scale: ScaleEstimate | None = None
        for index, file in enumerate(files):
            result = read_upload(file, index, max_bytes=max_bytes, max_pixels=max_pixels)
            if isinstance(result, RejectedFile):
                rejected.append(result)
                continue
            batch.append(result)
            if len(batch) == BATCH or sum(u.width * u.height for u, _ in batch) >= BATCH_PIXELS:
                scale = self._predict(batch, rejected, done, scale)
                batch = []
        if batch:
            self._predict(batch, rejected, done, scale)
        return done, rejected

    def _predict(
        self,
        batch: Sequence[tuple[Upload, Image.Image]],
        rejected: list[RejectedFile],
        done: list[tuple[Upload, Prediction]],
        scale: ScaleEstimate | None,
    ) -> ScaleEstimate:
        """Classify ``batch`` into ``done`` and ``rejected``, rescaled by ``scale`` (by default
        the batch's own); returns the scale used."""
        uploads = [upload for upload, _ in batch]
        images = [image for _, image in batch]
        with self._lock:
            scale = scale or self.predictor.scale_of_images(images)
            predictions = self.predictor.predict_images(
                images, [upload.name for upload in uploads], scale
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

    def heatmap_png(self, image: Image.Image, target: str | None) -> bytes:
        """The Grad-CAM overlay for ``target`` (default: the predicted class) as PNG bytes."""
        with self._lock:
            overlay = gradcam_overlay(self.predictor, image, target)
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        return buffer.getvalue()
