"""Running an exported model without PyTorch: ONNX Runtime and OpenVINO, and what an export
carries in its metadata.

An export (``leukoscope export``) is the graph of
:class:`~leukoscope.inference.pixel_model.PixelModel`: uint8 RGB pixels (N, H, W, 3) in,
``logits`` and pooled ``features`` out. Its metadata ties it to the weights it came from and
holds the model card and the abstention statistics, so that the file alone is a model that
predicts, calibrates and abstains anywhere. Nothing here imports torch or timm (about 4 s
of start-up on two cores, more than a whole one-image prediction may take).

Both runtimes read the same ONNX file, fp32 or int8 (QDQ). Which one is faster depends on the
CPU (int8 dot-product instructions, AVX-512, AMX); ``benchmarks/inference.py`` measures them,
and :data:`ENGINES` lists them fastest first on the machines measured.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.errors import LeukoscopeError
from leukoscope.inference.abstention import unpack_stats
from leukoscope.inference.softmax import softmax
from leukoscope.machine import cpu_cores, has_bf16_matrix_units
from leukoscope.models.card import ModelCard

ONNX_NAME = "model.onnx"
"""The export ``backend="auto"`` picks up from a model's directory."""
INT8_NAME = "model.int8.onnx"
FOLDER_EXPORTS = (INT8_NAME, ONNX_NAME)
"""The exports a model directory may hold, in the order the predictor tries them: a released
model ships an int8 export only where it is faster than fp32 and within one test image of its
accuracy (``benchmarks/inference.py``). An int8 export with 8-bit weights
(:data:`FULL_RANGE_INT8`) is passed over on a CPU that would compute it inexactly."""
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "features")
WEIGHTS_SHA_KEY = "leukoscope_weights_sha256"
"""Metadata key tying an export to the exact weights it came from."""
VIEWS_KEY = "test_time_views"
"""Metadata key: how many symmetric views of each image the export averages."""
CARD_KEY = "leukoscope_card"
"""Metadata key: the model card (JSON) as it was when the model was exported."""
STATS_KEY = "leukoscope_abstention"
"""Metadata key: the abstention statistics (base64 of :func:`~.abstention.pack_stats`)."""
PRECISION_KEY = "leukoscope_precision"
"""Metadata key: ``fp32``; ``int8`` (7-bit weights, exact on every CPU); or
:data:`FULL_RANGE_INT8`."""
BF16_KEY = "leukoscope_openvino_bf16"
"""Metadata key of an fp32 export that OpenVINO may compute in bfloat16 (``export --bf16``,
value ``"1"``) where the CPU has AMX (:func:`openvino_precision`)."""
BF16_ENV = "LEUKOSCOPE_BF16"
"""Environment variable: ``0`` makes OpenVINO compute every export in fp32."""
FULL_RANGE_INT8 = "int8-full"
"""Precision of an int8 export with 8-bit weights, which only CPUs with int8 dot-product
instructions (VNNI, AMX, Arm's dot product) compute exactly.

Without them x86 kernels add pairs of uint8 x int8 products in 16 bits, which saturates (an
8-bit SqueezeNet agreed with fp32 on 67% of test images on such a CPU); 7-bit weights avoid
that but coarsen every weight's steps. On the 2-core AMD EPYC with VNNI the 224-px
``pbc8-squeezenet1_1`` in int8 agreed with fp32 on 98.63% of validation images with 7-bit
weights (61 errors against fp32's 57) and on 99.61% with 8-bit ones (57 errors; min-max
calibration, ``benchmarks/int8.py``). On the 2-core AMD EPYC with AVX2 only, ONNX Runtime
computed the two released 8-bit exports with 110 and 178 test errors against fp32's 61 and 16,
and OpenVINO the second with 163 (``benchmarks/results/inference-epyc-avx2*.json``). So a
predictor uses such an export only on a CPU that has the instructions, in either runtime, and
the fp32 export elsewhere (:func:`leukoscope.machine.has_int8_dot_product`)."""
VIEW_COUNTS = (1, 4, 8)

ENGINES = ("onnx", "openvino")
"""The runtimes for exports, in the order ``backend="auto"`` tries them.

ONNX Runtime first: end to end from JPEG files on the 2-core AMD EPYC (AVX-512 with VNNI, no
AMX; ``benchmarks/results/inference.json``) it ran the SqueezeNets, the fast models, in fp32
1.01-1.12 times as fast as OpenVINO, and in int8 within 7% of it either way; OpenVINO ran the
EfficientNets (four test-time views) 1.15-1.22 times as fast. An earlier run the same day had
the ranking the other way round for most pairs, so neither is consistently ahead on this CPU.
On the 2-core Intel Xeon with AMX (``benchmarks/results/inference-xeon*.json``, 2026-12-06)
OpenVINO led for three of the four int8 SqueezeNets, ONNX Runtime for the fast 128-px one and
for most fp32 ones. On the 2-core AMD EPYC with AVX2 only (``inference-epyc-avx2-imports.json``,
2026-12-07) ONNX Runtime led for every SqueezeNet in fp32 and for both 7-bit int8 ones.
OpenVINO is the fallback and ``--backend openvino``, and runs the architectures of
:data:`ARCH_ENGINES` first.
"""
ARCH_ENGINES: dict[str, tuple[str, ...]] = {"efficientnet_lite0": ("openvino", "onnx")}
"""Architectures that ``backend="auto"`` runs in another order than :data:`ENGINES`.

OpenVINO ran the EfficientNet-Lite0 models (depthwise convolutions, four test-time views)
faster end to end than ONNX Runtime on both CPUs measured, in fp32 and int8: 1.14-1.21 times
as fast on the 2-core AMD EPYC with AVX-512 VNNI (``benchmarks/results/inference.json``,
2026-11-29) and 1.32-1.60 times on the 2-core Intel Xeon with AMX
(``benchmarks/results/inference-xeon.json``, 2026-12-06: 19.2 against 12.4 images/s for
``pbc8-efficientnet_lite0``, the model ``make demo`` and the web app use), and 1.24-1.27 times
in fp32 on the 2-core AMD EPYC with AVX2 only (``inference-epyc-avx2-imports.json``,
2026-12-07: 92.1 against 72.8 images/s for that model)."""
QUICK_START_FILES = 32
"""Jobs of fewer cell images than this run in :data:`ENGINES` order whatever the arch: ONNX
Runtime opens a model sooner than OpenVINO compiles it, which outweighs OpenVINO's faster
EfficientNet on a few images. One-image ``leukoscope predict`` on the 2-core AMD EPYC with AVX2
only (2026-12-07, a slow spell; ``benchmarks/startup.py``,
``benchmarks/results/startup-quick-start.json``): ``pbc8-efficientnet_lite0`` 1.62 s against
2.33 s, ``wbc5-efficientnet_lite0`` 1.56 s against 2.09 s; at 32 images (run with this
threshold at 64) OpenVINO was about as quick (5.48 s against 5.49, 4.82 against 4.60). Each
further image costs OpenVINO less (92.1 against 72.8 images/s end to end for the 8-class one
there, :data:`ARCH_ENGINES`; about twice as fast again in bfloat16 on CPUs with AMX), so
larger jobs keep the arch's order."""
BACKENDS = ("auto", "torch", *ENGINES)
ENGINE_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}


class EngineMissing(LeukoscopeError):
    """The runtime a backend needs is not installed."""


ModelFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""uint8 pixels (N, H, W, 3) -> (raw logits (N, C), pooled features (N, D)), float32."""

ENGINE_BATCH = 16
"""Most images an engine computes in one call (:func:`in_batches`); the predictor decodes 64
at a time.

A smaller batch probably keeps a layer's activations closer to the cores' caches. On the 2-core
Intel Xeon with AMX, ``predict_paths`` over each released model's test split in a running
process, calls of 16 and of 64 taking eight turns each (``benchmarks/engine_batch.py``,
``benchmarks/results/engine-batch.json``, 2026-12-06 23:01 UTC): every released model ran faster
in calls of 16, by 1.3% to 16.8% (medians; the 8-class EfficientNet-Lite0 in OpenVINO bf16 180.7
against 174.1 images/s, faster in six of eight turns; the 224-px 8-class SqueezeNet in ONNX
Runtime int8 334.4 against 286.4)."""


def turned_views(pixels: np.ndarray, views: int) -> list[np.ndarray]:
    """The first ``views`` symmetric views of uint8 images (N, H, W, 3): turned by 0, 90, 180
    and 270 degrees, then (8 views) their mirror images turned the same. The same set of views
    as :func:`~leukoscope.inference.pixel_model.symmetric_views` makes inside the network, so
    their averages agree."""
    mirrors = (pixels, pixels[:, :, ::-1]) if views > 4 else (pixels,)
    turned = [np.rot90(image, k, axes=(1, 2)) for image in mirrors for k in range(4)]
    return [np.ascontiguousarray(view) for view in turned[:views]]


def unsure_of_first_view(logits: np.ndarray, temperature: float, below: float) -> np.ndarray:
    """Which images get every view under :func:`with_extra_views`.

    Parameters
    ----------
    logits
        The first view's logits, shape (N, classes).
    temperature
        The model's calibrated temperature.
    below
        The card's ``extra_views_below``.

    Returns
    -------
    ndarray of bool, shape (N,)
        True where the calibrated confidence (the largest softmax of ``logits / temperature``)
        is under ``below``.
    """
    return softmax(logits / temperature, axis=1).max(axis=1) < below


def with_extra_views(run: ModelFn, views: int, temperature: float, below: float) -> ModelFn:
    """``run`` (one view of each image) made to average the logits of all ``views`` symmetric
    views for the images whose first view's calibrated confidence (softmax of logits /
    ``temperature``) is under ``below``; the others keep their first view's logits. The
    features are always the first view's. See
    :attr:`~leukoscope.models.card.ModelCard.extra_views_below`.

    Most cells are clear from one view: the other views cost a model pass each, and they only
    change the call where the first view hesitates. The features feed the abstention rule's
    distance to the training classes, which must be fitted on features of one kind: an
    average of four views lies closer to its class than one view, and a rule fitted on
    averages flagged 44% of the 8-class EfficientNet's test cells when most of them came with
    their first view's features, against 5.7% with every view (``leukoscope evaluate``)."""

    def run_views(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = run(pixels)
        unsure = np.flatnonzero(unsure_of_first_view(logits, temperature, below))
        if not unsure.size:
            return logits, features
        others = turned_views(pixels[unsure], views)[1:]
        more = run(np.concatenate(others))[0].reshape(len(others), len(unsure), -1)
        logits = logits.copy()
        logits[unsure] = (logits[unsure] + more.sum(axis=0)) / views
        return logits, features

    return run_views


def in_batches(run: ModelFn, size: int) -> ModelFn:
    """``run`` called on at most ``size`` images at a time, its outputs joined in order."""

    def run_in_batches(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(pixels) <= size:
            return run(pixels)
        parts = [run(pixels[start : start + size]) for start in range(0, len(pixels), size)]
        logits, features = zip(*parts, strict=True)
        return np.concatenate(logits), np.concatenate(features)

    return run_in_batches


def inexact_here(full_range: bool) -> bool:
    """Whether this CPU computes an int8 export inexactly: one with 8-bit weights
    (``full_range``, :data:`FULL_RANGE_INT8`) on a CPU without int8 dot-product instructions
    (VNNI, AMX), or whose flags are unknown. 7-bit weights are exact on every CPU. Such an
    export is passed over for prediction, and checked with ``onnx_session(exact_int8=True)``.
    """
    from leukoscope.machine import has_int8_dot_product

    return full_range and not has_int8_dot_product()


def onnx_session(path: str | Path, *, exact_int8: bool = False) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation and one thread per core.

    Its threads sleep instead of spinning between operators: decoding workers and other
    processes share these cores, and with two busy cores spinning cost 8% of end-to-end
    throughput in our measurements.

    With ``exact_int8`` the graph is left unoptimised, so that an int8 (QDQ) export runs as
    written: each operator in fp32 between its quantise and dequantise steps. That is the
    arithmetic of CPUs with int8 dot-product instructions (VNNI, AMX), whose integer sums are
    exact, reproduced on any CPU, for checking an :data:`FULL_RANGE_INT8` export's accuracy
    where it would otherwise be computed inexactly (fused kernels without those instructions
    sum pairs of products in 16 bits, which saturates with 8-bit weights). The earlier 128-px
    5-class SqueezeNet's 8-bit export made 17 errors on its 1,227-image test split on a Xeon
    with AMX (``benchmarks/results/inference-xeon-all.json``); on a 2-core AMD EPYC with AVX2
    only it made 178 fused and 17 this way (fp32: 16). Unfused operators are slower: this is
    for checks, not for predicting.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if exact_int8
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    options.intra_op_num_threads = cpu_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session: Any) -> ModelFn:
    """Run an exported model in an ONNX Runtime session."""

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return logits, features

    return run


def openvino_precision(metadata: dict[str, str]) -> str:
    """The precision OpenVINO computes an export in (``INFERENCE_PRECISION_HINT``).

    ``bf16`` for an export stamped :data:`BF16_KEY` on a CPU with AMX, unless
    :data:`BF16_ENV` is ``0``; otherwise ``f32``, which int8 (QDQ) graphs ignore (they run in
    int8). OpenVINO would pick bf16 on its own on AMX CPUs, but that is a different model from
    the one that was checked, so only exports whose bf16 results were checked against fp32 get
    it. On the 2-core Intel Xeon with AMX the one-view 8-class EfficientNet-Lite0 ran 2.2 times
    as fast in bf16 as in fp32 model only (291.5 against 133.1 images/s) and 1.6 times end to
    end, with 20 errors against 21 on its 2,037 test images (``benchmarks/inference.py``,
    ``benchmarks/results/inference-xeon-bf16.json``).
    """
    if metadata.get(BF16_KEY) != "1" or os.environ.get(BF16_ENV) == "0":
        return "f32"
    return "bf16" if has_bf16_matrix_units() else "f32"


def openvino_model(path: str | Path) -> tuple[Any, dict[str, str], str]:
    """An export compiled by OpenVINO for this CPU, its metadata, and the precision
    :func:`openvino_precision` chose for it (``f32`` or ``bf16``). One inference request at a
    time on every core (the ``LATENCY`` hint): the predictor calls the model one batch at a
    time. Threads are not pinned to cores, which decoding threads and other processes share
    (pinned, one image of the 128-px SqueezeNet in int8 took 4-7 ms instead of 1.5 ms on two
    shared cores).
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    # The ONNX metadata is the "framework" section of the model's runtime information.
    framework = model.get_rt_info()["framework"] if model.has_rt_info(["framework"]) else {}
    metadata = {key: str(value.astype(str)) for key, value in framework.items()}
    precision = openvino_precision(metadata)
    compiled = core.compile_model(
        model,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": cpu_cores(),
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": precision,
        },
    )
    return compiled, metadata, precision


def openvino_runner(compiled: Any) -> ModelFn:
    """Run a compiled OpenVINO model, one request at a time."""
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = request.infer({INPUT_NAME: pixels})
        logits, features = (np.array(results[output]) for output in outputs)
        return logits, features

    return run


@dataclass(frozen=True)
class Export:
    """An export opened by one engine: how to run it, what its metadata says, and what it is
    computed in: ``bf16`` where OpenVINO computes it in bfloat16 (:func:`openvino_precision`),
    else the precision it is stamped with (``fp32``, ``int8`` or :data:`FULL_RANGE_INT8`)."""

    path: Path
    engine: str
    run: ModelFn
    metadata: dict[str, str]
    precision: str

    def card(self) -> ModelCard:
        """The model card embedded at export (an export made before cards were embedded, or
        by another tool, has none)."""
        text = self.metadata.get(CARD_KEY)
        if text is None:
            raise LeukoscopeError(
                f"{self.path}: the export carries no model card (made by an older leukoscope); "
                "put it in its model folder beside model_card.json, or export it again"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LeukoscopeError(f"{self.path}: its embedded model card is not JSON") from exc
        return ModelCard.from_json(data, f"{self.path} (embedded model card)")

    def abstention_stats(self) -> bytes:
        """The abstention statistics file embedded at export."""
        packed = self.metadata.get(STATS_KEY)
        if packed is None:
            raise LeukoscopeError(
                f"{self.path}: the export carries no abstention statistics; export it again"
            )
        return unpack_stats(base64.b64decode(packed))

    def unsuited(self) -> str | None:
        """Why this CPU cannot run the export exactly (see :func:`inexact_here`), or None."""
        if not inexact_here(self.metadata.get(PRECISION_KEY) == FULL_RANGE_INT8):
            return None
        return (
            f"{self.path} has 8-bit int8 weights, which this CPU, without int8 dot-product "
            "instructions (VNNI, AMX), computes inexactly"
        )

    def check(self, card: ModelCard, card_source: str) -> None:
        """Raise unless the export was made from ``card``'s weights with its views."""
        problem = None
        if self.metadata.get(WEIGHTS_SHA_KEY) != card.sha256:
            problem = f"was exported from other weights than {card_source}"
        elif (views := views_mismatch(self.metadata, card)) is not None:
            problem = f"{views} of {card_source}"
        if problem is not None:
            raise LeukoscopeError(f"{self.path} {problem}; export it again")


def views_mismatch(metadata: dict[str, str], card: ModelCard) -> str | None:
    """How an export's graph differs in its views from the card's
    :attr:`~leukoscope.models.card.ModelCard.graph_views`, or None."""
    exported, wanted = int(metadata.get(VIEWS_KEY, 1)), card.graph_views
    if exported == wanted:
        return None
    return f"was exported with {exported} view(s) of each image in its graph, not the {wanted}"


def open_export(path: str | Path, engine: str) -> Export:
    """Open an exported model with ``engine`` (``onnx``: ONNX Runtime, or ``openvino``).

    Raises
    ------
    LeukoscopeError
        Naming the file: missing, not loadable, or the engine not installed.
    """
    path = Path(path)
    if engine not in ENGINES:
        raise LeukoscopeError(f"unknown engine {engine!r}: use {', '.join(ENGINES)}")
    if not path.is_file():
        raise LeukoscopeError(f"{path}: no such exported model (run leukoscope export first)")
    try:
        if engine == "onnx":
            session = onnx_session(path)
            metadata = dict(session.get_modelmeta().custom_metadata_map)
            stamped = metadata.get(PRECISION_KEY, "fp32")
            run = in_batches(onnx_runner(session), ENGINE_BATCH)
            return Export(path, engine, run, metadata, stamped)
        compiled, metadata, hint = openvino_model(path)
        precision = "bf16" if hint == "bf16" else metadata.get(PRECISION_KEY, "fp32")
        run = in_batches(openvino_runner(compiled), ENGINE_BATCH)
        return Export(path, engine, run, metadata, precision)
    except ImportError:
        raise EngineMissing(
            f"the {engine} backend needs {ENGINE_PACKAGES[engine]}, which is not installed"
        ) from None
    except Exception as exc:  # both runtimes raise their own, unexported exception types
        raise LeukoscopeError(f"{path}: {engine} cannot load it ({exc})") from exc


def engines_for(backend: str, arch: str | None = None, files: int | None = None) -> Sequence[str]:
    """The engines ``backend`` may use, in the order to try them: for ``auto``, the order of
    :data:`ARCH_ENGINES` for the model's ``arch`` where it has one, else :data:`ENGINES`, which
    is also the order for a job of fewer than :data:`QUICK_START_FILES` ``files``."""
    if backend in ENGINES:
        return (backend,)
    if arch is None or (files is not None and files < QUICK_START_FILES):
        return ENGINES
    return ARCH_ENGINES.get(arch, ENGINES)
