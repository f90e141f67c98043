"""`md export CHECKPOINT --format onnx|torchscript --out FILE`: a deployable graph."""

from __future__ import annotations

import json
from pathlib import Path

import click

from md.cli.data import _Size


class _Batch(click.ParamType):
    """``dynamic`` or a positive batch size."""

    name = "dynamic|N"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "dynamic":
            return None
        if not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is neither 'dynamic' nor a positive count", param, ctx)
        return int(text)


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript"]),
    default="onnx",
    show_default=True,
    help="ONNX (run by ONNX Runtime; needs the export extra) or TorchScript (torch.jit).",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write."
)
@click.option(
    "--batch",
    type=_Batch(),
    default="dynamic",
    show_default=True,
    help="Batch size fixed in the graph, or 'dynamic'.",
)
@click.option(
    "--size",
    type=_Size(),
    default=None,
    help="Frame size WxH [default: 640x512 detection, 640x480 segmentation].",
)
@click.option(
    "--score-thresh",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.01,
    show_default=True,
    help="Detection: score threshold applied before NMS (0.01 is what md evaluate scores).",
)
@click.option("--logits", is_flag=True, help="Also output the raw head outputs (logits).")
@click.option(
    "--int8", is_flag=True, help="Static int8 quantization (ONNX Runtime, QDQ, per-channel)."
)
@click.option(
    "--calib",
    default=None,
    help="--int8: calibration inputs, a target store with bundled inputs or a dataset root.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="--int8: calibration frames (the first ones of the train split / store).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the file's metadata as JSON.")
def export(
    checkpoint: Path,
    fmt: str,
    out: Path,
    batch: int | None,
    size: tuple[int, int] | None,
    score_thresh: float,
    logits: bool,
    int8: bool,
    calib: str | None,
    calib_samples: int,
    as_json: bool,
) -> None:
    """Export a student or teacher CHECKPOINT as one graph for the camera.

    The graph takes visible uint8 (N, 3, H, W) and thermal uint8 (N, 1, h, w) at the
    thermal camera's own resolution, and does the scaling, thermal up-sampling, normalisation
    and folded stem inside. Detection gives boxes, scores and per-image counts after NMS;
    segmentation a uint8 class map. See docs/deploy.md.
    """
    from md.deploy.export import ExportOptions, export_checkpoint
    from md.errors import MdError

    if int8 and fmt != "onnx":
        raise MdError("--int8 quantizes ONNX graphs: use --format onnx")
    if int8 and not calib:
        raise MdError(
            "--int8 needs calibration inputs: --calib STORE (with bundled inputs) or "
            "--calib DATASET (its train split)"
        )
    if calib and not int8:
        raise MdError("--calib only applies with --int8")
    opts = ExportOptions(
        format=fmt, size=size, batch=batch, score_thresh=score_thresh, logits=logits
    )
    from md.audit import audited

    inputs = {"checkpoint": checkpoint, **({"calib": calib} if calib else {})}
    with audited("export", inputs, {"model": out}) as log:
        log.details.update(format=fmt, int8=int8)
        if int8:
            from md.deploy.quantize import export_int8

            meta = export_int8(checkpoint, out, opts, calib=str(calib), samples=calib_samples)
        else:
            meta = export_checkpoint(checkpoint, out, opts)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    h, w = meta["image_size"]
    thermal = (
        f"thermal {meta['thermal_size'][1]}x{meta['thermal_size'][0]} (factor "
        f"{meta['thermal_factor']})"
        if meta["thermal_size"]
        else "no thermal"
    )
    kind = "int8 ONNX" if meta.get("int8") else fmt
    click.echo(
        f"wrote {out} ({kind}, {meta['task']} {meta['model']['kind']}, {w}x{h}, {thermal}, "
        f"batch {meta['batch']}, {out.stat().st_size} bytes)"
    )
