"""``leukoscope export``: ONNX files for fast CPU inference (fp32, or int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoscope.cli.console import console
from leukoscope.cli.options import Calibration
from leukoscope.errors import LeukoscopeError

PARITY_TOLERANCE = 1e-4
OPSET = 17
"""``leukoscope.inference.export.OPSET``, the lowest opset the export supports."""
INT8_NAME, ONNX_NAME = "model.int8.onnx", "model.onnx"
"""``leukoscope.inference.runtime.FOLDER_EXPORTS``: the exports ``--backend auto`` picks up
in a model directory, int8 first."""


def export(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    onnx_out: Annotated[
        Path | None,
        typer.Option(
            "--onnx", help=f"ONNX file to write (default: {ONNX_NAME} in the model directory)."
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="Quantise to int8 (needs a manifest).")
    ] = False,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--calibration-manifest", help="Manifest whose training images calibrate int8."
        ),
    ] = None,
    images_per_class: Annotated[
        int,
        typer.Option("--images-per-class", min=1, help="Calibration images per class for int8."),
    ] = 32,
    calibration: Annotated[
        Calibration,
        typer.Option("--calibration", help="int8 activation ranges from the calibration values."),
    ] = Calibration.PERCENTILE,
    full_range: Annotated[
        bool,
        typer.Option(
            "--full-range",
            help="int8 with 8-bit weights instead of 7: closer to fp32, but exact only on CPUs "
            "with int8 dot-product instructions (VNNI, AMX), so predict runs the fp32 export on "
            "others.",
        ),
    ] = False,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16",
            help="fp32 export that OpenVINO may compute in bfloat16 on CPUs with AMX (about "
            "twice as fast there for EfficientNet-Lite0): only once benchmarks/inference.py has "
            "shown that bf16 keeps the test accuracy.",
        ),
    ] = False,
    opset: Annotated[int, typer.Option("--opset", min=OPSET, help="ONNX opset.")] = OPSET,
    restamp: Annotated[
        bool,
        typer.Option(
            "--restamp",
            help="Only write the model's current card (e.g. after calibrate) into the existing "
            "export(s): --onnx, or every export in the model directory.",
        ),
    ] = False,
) -> None:
    """Export to ONNX (uint8 pixels in; logits and features out; any batch size).

    fp32 exports are checked against PyTorch on random images. int8 uses ONNX Runtime static
    quantisation (QDQ, per-channel) and reports how often it agrees with PyTorch on the
    manifest's validation images.
    """
    from leukoscope.inference import export as onnx_export
    from leukoscope.inference.runtime import inexact_here
    from leukoscope.machine import has_bf16_matrix_units, has_int8_dot_product

    model_dir = model if model.is_dir() else model.parent
    if restamp:
        found = [model_dir / name for name in (INT8_NAME, ONNX_NAME)]
        targets = [onnx_out] if onnx_out else [path for path in found if path.is_file()]
        if not targets:
            raise LeukoscopeError(f"{model_dir}: no export to restamp")
        for target in targets:
            onnx_export.restamp(target, model_dir)
            console.print(f"Restamped {target} with {model_dir}'s current card")
        return
    if full_range and not int8:
        raise LeukoscopeError("--full-range is an option of --int8 exports")
    if bf16 and int8:
        raise LeukoscopeError("--bf16 is an option of fp32 exports, not of --int8 ones")
    out = onnx_out or model_dir / (INT8_NAME if int8 else ONNX_NAME)
    exact = inexact_here(full_range)  # so checked as CPUs with VNNI or AMX compute it
    if int8:
        if manifest is None:
            raise LeukoscopeError("--int8 needs --calibration-manifest (training images)")
        onnx_export.export_int8(
            model,
            out,
            manifest,
            images_per_class=images_per_class,
            calibration=calibration.value,
            full_range=full_range,
            opset=opset,
        )
        agreement, n = onnx_export.int8_agreement(
            model, out, manifest, images_per_class=images_per_class, exact_int8=exact
        )
        how = ", computed as CPUs with VNNI or AMX compute it" if exact else ""
        console.print(
            f"int8 predicts the same class as PyTorch on {agreement:.1%} of {n} images{how}"
        )
        if exact:
            console.print(
                "[yellow]note:[/] this CPU has no int8 dot-product instructions (VNNI, AMX) "
                "to compute 8-bit weights exactly, so predict runs the fp32 export here."
            )
        elif has_int8_dot_product() is False:
            console.print(
                "[yellow]note:[/] this CPU has no int8 dot-product instructions (VNNI, AMX), "
                "on which int8 gains most; check with benchmarks/inference.py that it is "
                "faster than fp32 here and no less accurate on the test split."
            )
    else:
        onnx_export.export_fp32(model, out, opset=opset, bf16=bf16)
        difference = onnx_export.onnx_parity(model, out)
        verdict = "ok" if difference <= PARITY_TOLERANCE else "[yellow]above tolerance[/]"
        console.print(f"ONNX Runtime vs PyTorch: max logit difference {difference:.2e} ({verdict})")
        if bf16:
            here = "this one has" if has_bf16_matrix_units() else "this one has not"
            console.print(f"OpenVINO computes it in bf16 on CPUs with AMX ({here})")
    size_mb = out.stat().st_size / 1e6
    console.print(f"Wrote {out} ({size_mb:.1f} MB)")
    if out.parent.resolve() != model_dir.resolve() or out.name not in (INT8_NAME, ONNX_NAME):
        console.print(f"Use it with: leukoscope predict --model {out} ...")
    elif out.name == INT8_NAME:
        where = " on CPUs with VNNI or AMX" if exact else ""
        console.print(f"predict --model {model_dir} now runs it{where} (before {ONNX_NAME}).")
