"""ONNX export (fp32, and int8 by ONNX Runtime static quantisation) of a saved model.

The graph is :class:`~leukoscope.inference.pixel_model.PixelModel`: uint8 RGB pixels
(N, H, W, 3) at the model's input size in, ``logits`` and pooled ``features`` out, batch size
free. It is stamped with the sha256 of the weights it came from, so a predictor never pairs an
export with a model card it does not belong to, and it carries the model card and the
abstention statistics (losslessly packed, :func:`~leukoscope.inference.abstention.pack_stats`),
so that the file alone is a complete model (:mod:`leukoscope.inference.runtime`). Where the
first convolution does not pad (SqueezeNet, Inception v3), the input normalisation is folded
into its weights: the graph then feeds pixels straight into it, which spares two full-image
passes (and, in int8, lets the first layer read the pixels as they are).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from leukoscope.data.batches import pixel_batches
from leukoscope.data.datasets import evenly_spaced, read_manifest
from leukoscope.data.preprocess import Preprocessing
from leukoscope.errors import LeukoscopeError
from leukoscope.fileio import atomic_write_bytes
from leukoscope.inference.abstention import STATS_NAME, pack_stats
from leukoscope.inference.pixel_model import PixelModel, torch_runner
from leukoscope.inference.runtime import (
    BF16_KEY,
    CARD_KEY,
    FULL_RANGE_INT8,
    INPUT_NAME,
    OUTPUT_NAMES,
    PRECISION_KEY,
    STATS_KEY,
    VIEWS_KEY,
    WEIGHTS_SHA_KEY,
    ModelFn,
    onnx_runner,
    onnx_session,
    views_mismatch,
)
from leukoscope.models import ModelCard, load_model
from leukoscope.models.card import card_path, load_card

OPSET = 17
FOLD_TOLERANCE = 1e-4
"""Largest change of the logits (relative to the largest, when above 1) a fold may make."""


class FoldedPixelModel(PixelModel):
    """A :class:`PixelModel` whose first convolution takes pixel values 0-255 directly."""

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.permute(0, 3, 1, 2).to(torch.float32)


def fold_normalisation(pixel_model: PixelModel, size: int) -> PixelModel:
    """A copy of ``pixel_model`` with ``(x / 255 - mean) / std`` folded into the first
    convolution, or ``pixel_model`` itself where that would not be exact.

    Per input channel the weights scale by ``1 / (255 std)`` and the bias shifts by the weighted
    sum of ``mean / std``. That is exact only if the convolution does not pad: zero padding of
    the normalised image would become padding with black pixels. The fold is checked on random
    pixels, which also catches a first registered convolution that does not run first.
    """
    model = copy.deepcopy(pixel_model.model)
    conv = next((m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    unpadded = conv is not None and conv.padding in ((0, 0), "valid")
    if conv is None or not unpadded or conv.in_channels != 3 or conv.groups != 1:
        return pixel_model
    mean = pixel_model.mean.view(1, 3, 1, 1)
    std = pixel_model.std.view(1, 3, 1, 1)
    with torch.no_grad():
        shift = (conv.weight * mean / std).sum(dim=(1, 2, 3))
        bias = -shift if conv.bias is None else conv.bias - shift
        conv.weight.div_(255.0 * std)
        conv.bias = nn.Parameter(bias)
        folded = FoldedPixelModel(
            model, mean.flatten().tolist(), std.flatten().tolist(), pixel_model.views
        )
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=generator)
        expected, actual = pixel_model.eval()(pixels)[0], folded.eval()(pixels)[0]
    error = float((expected - actual).abs().max()) / max(1.0, float(expected.abs().max()))
    return folded if error <= FOLD_TOLERANCE else pixel_model


def _abstention_stats(model_path: str | Path, card: ModelCard) -> bytes | None:
    """The model's abstention statistics file, checked against its card (None when the model
    has no abstention rule)."""
    if card.abstention is None:
        return None
    path = Path(model_path)
    stats = (path if path.is_dir() else path.parent) / STATS_NAME
    try:
        data = stats.read_bytes()
    except OSError as exc:
        raise LeukoscopeError(f"{stats}: cannot read the abstention statistics ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != card.abstention.stats_sha256:
        raise LeukoscopeError(f"{stats}: sha256 does not match the model card; recalibrate")
    return data


def _stamp(
    model: onnx.ModelProto,
    card: ModelCard,
    precision: str,
    stats: bytes | None,
    *,
    bf16: bool = False,
) -> bytes:
    """Record where the graph came from, the card and the abstention statistics in its
    metadata (and :data:`~leukoscope.inference.runtime.BF16_KEY` with ``bf16``) and serialise
    it."""
    size = card.preprocessing.input_size
    props = {
        WEIGHTS_SHA_KEY: card.sha256,
        "leukoscope_arch": card.arch,
        "leukoscope_classes": ",".join(card.classes),
        "leukoscope_input": f"uint8 RGB NHWC {size}x{size}",
        PRECISION_KEY: precision,
        VIEWS_KEY: str(card.graph_views),
        CARD_KEY: json.dumps(card.to_json(), separators=(",", ":")),
    }
    if stats is not None:
        props[STATS_KEY] = base64.b64encode(pack_stats(stats)).decode("ascii")
    if bf16:
        props[BF16_KEY] = "1"
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_fp32(
    model_path: str | Path, out: str | Path, *, opset: int = OPSET, bf16: bool = False
) -> Path:
    """Export a saved model to an fp32 ONNX file (written atomically).

    Parameters
    ----------
    model_path : str or Path
        The model directory.
    out : str or Path
        The ONNX file to write.
    opset : int
        ONNX opset, at least :data:`OPSET`.
    bf16 : bool
        Let OpenVINO compute the export in bfloat16 on CPUs with AMX
        (:func:`~leukoscope.inference.runtime.openvino_precision`); the graph is the same.

    Returns
    -------
    Path
        ``out``.
    """
    if opset < OPSET:
        raise LeukoscopeError(f"opset {opset} is too old: use {OPSET} or newer")
    model, card = load_model(model_path)
    size = card.preprocessing.input_size
    pixel_model = fold_normalisation(PixelModel.from_card(model, card), size)
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs the
        # onnxscript package; for these plain CNNs both give the same graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            pixel_model,
            (example,),
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        )
        graph = onnx.load(str(raw))
    stats = _abstention_stats(model_path, card)
    atomic_write_bytes(out, _stamp(graph, card, "fp32", stats, bf16=bf16))
    return Path(out)


def restamp(onnx_path: str | Path, model_path: str | Path) -> Path:
    """Write the model's current card and abstention statistics into an existing export,
    keeping its graph (written atomically).

    A card changes after export without its weights changing (``calibrate``, a new sample
    scale): an export in the model directory reads the card beside it, but a copy used on its
    own carries what it was stamped with. Re-exporting int8 would also re-quantise, and then
    need checking again; restamping does not touch the graph.

    Raises
    ------
    LeukoscopeError
        When the export was made from other weights or with other test-time views than the
        card's (the graph itself is then wrong: export again).
    """
    card = load_card(card_path(model_path))
    graph = onnx.load(str(onnx_path))
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    if metadata.get(WEIGHTS_SHA_KEY) != card.sha256:
        raise LeukoscopeError(f"{onnx_path} was exported from other weights than {model_path}")
    if (problem := views_mismatch(metadata, card)) is not None:
        raise LeukoscopeError(f"{onnx_path} {problem} of {model_path}; export it again")
    del graph.metadata_props[:]
    precision, bf16 = metadata.get(PRECISION_KEY, "fp32"), metadata.get(BF16_KEY) == "1"
    stats = _abstention_stats(model_path, card)
    atomic_write_bytes(onnx_path, _stamp(graph, card, precision, stats, bf16=bf16))
    return Path(onnx_path)


CALIBRATIONS: dict[str, tuple[CalibrationMethod, dict[str, Any]]] = {
    "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99}),
    "minmax": (CalibrationMethod.MinMax, {}),
}
"""How int8 activation ranges are set: the central 99.99% of the calibration values, or all."""


class PixelBatches(CalibrationDataReader):
    """Feeds batches of image pixels, made as the predictor makes them, to ONNX Runtime's
    quantisation calibrator."""

    def __init__(
        self, paths: Sequence[Path], preprocessing: Preprocessing, batch_size: int = 32
    ) -> None:
        self._batches: Iterator[Any] = pixel_batches(paths, preprocessing, batch_size=batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        for batch in self._batches:
            if batch.indices:
                return {INPUT_NAME: batch.pixels}
        return None


def export_int8(
    model_path: str | Path,
    out: str | Path,
    manifest: str | Path,
    *,
    images_per_class: int = 32,
    calibration: str = "percentile",
    full_range: bool = False,
    opset: int = OPSET,
) -> Path:
    """Export, then quantise statically to int8: QDQ format, per-channel int8 weights, uint8
    activations whose ranges are calibrated on training images of the manifest.

    uint8 activations with int8 weights is what ONNX Runtime's x86 kernels are built for, but
    without int8 dot-product instructions (VNNI, AMX) they sum products in 16 bits, which
    saturates; ``reduce_range`` (7-bit weights) avoids that. Without it a PBC SqueezeNet agreed
    with fp32 on 67% of test images on such a CPU, with it 96%. ``full_range`` keeps 8-bit
    weights for CPUs that have the instructions, and marks the export
    :data:`~leukoscope.inference.runtime.FULL_RANGE_INT8`, which a predictor runs only on them.
    By default each activation's range is the 0.01-99.99 percentile of its calibration values
    rather than min to max, so that a few extreme values do not coarsen the steps for all the
    others (compared on validation images by ``benchmarks/int8.py``).
    """
    if calibration not in CALIBRATIONS:
        raise LeukoscopeError(
            f"unknown int8 calibration {calibration!r}: choose from {', '.join(CALIBRATIONS)}"
        )
    method, options = CALIBRATIONS[calibration]
    _, card = load_model(model_path)
    samples, _ = read_manifest(manifest, "train", classes=card.classes)
    paths = [s.path for s in evenly_spaced(samples, images_per_class)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, quantised = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "q.onnx"))
        export_fp32(model_path, fp32, opset=opset)
        # ONNX's own shape inference, not ONNX Runtime's symbolic one, which cannot follow
        # the reshape that averages test-time views (the batch axis is free).
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantised),
            # One image per batch: the histogram calibrators stack batches of equal shape.
            PixelBatches(paths, card.preprocessing, batch_size=1),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not full_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options=options,
        )
        graph = onnx.load(str(quantised))
    precision = FULL_RANGE_INT8 if full_range else "int8"
    atomic_write_bytes(out, _stamp(graph, card, precision, _abstention_stats(model_path, card)))
    return Path(out)


def _torch_and_onnx(
    model_path: str | Path, onnx_path: str | Path, *, exact_int8: bool = False
) -> tuple[ModelFn, ModelFn, ModelCard]:
    """PyTorch and ONNX Runtime runners of one model, and its card (``exact_int8``: see
    :func:`~leukoscope.inference.runtime.onnx_session`)."""
    model, card = load_model(model_path)
    reference = torch_runner(PixelModel.from_card(model, card))
    return reference, onnx_runner(onnx_session(onnx_path, exact_int8=exact_int8)), card


def onnx_parity(model_path: str | Path, onnx_path: str | Path, n: int = 4, seed: int = 0) -> float:
    """Largest difference of the logits of PyTorch and ONNX Runtime on random pixels, in units
    of the largest logit when that exceeds 1 (random-weight deep nets give logits of 1e10)."""
    reference, exported, card = _torch_and_onnx(model_path, onnx_path)
    size = card.preprocessing.input_size
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    expected, actual = reference(pixels)[0], exported(pixels)[0]
    return float(np.abs(expected - actual).max() / max(1.0, float(np.abs(expected).max())))


def int8_agreement(
    model_path: str | Path,
    onnx_path: str | Path,
    manifest: str | Path,
    *,
    split: str = "val",
    images_per_class: int = 32,
    exact_int8: bool = False,
) -> tuple[float, int]:
    """How often an export predicts the same class as PyTorch on the manifest's ``split``
    images: (fraction, number of images). With ``exact_int8``, as CPUs with int8 dot-product
    instructions compute it, whatever this CPU has (see
    :func:`~leukoscope.inference.runtime.onnx_session`)."""
    reference, exported, card = _torch_and_onnx(model_path, onnx_path, exact_int8=exact_int8)
    samples, _ = read_manifest(manifest, split, classes=card.classes)
    batches = PixelBatches(
        [s.path for s in evenly_spaced(samples, images_per_class)], card.preprocessing
    )
    same = total = 0
    while (batch := batches.get_next()) is not None:
        pixels = batch[INPUT_NAME]
        same += int((reference(pixels)[0].argmax(1) == exported(pixels)[0].argmax(1)).sum())
        total += len(pixels)
    return (same / total if total else 0.0), total
