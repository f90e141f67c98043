"""`md evaluate ...`: published metrics of saved outputs (KAIST results files, MFNet PNGs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click

from md.cli.group import MdGroup
from md.eval import kaist, mfnet
from md.eval.groups import kaist_groups, parse_groups


@click.group(cls=MdGroup)
def evaluate() -> None:
    """Evaluate saved outputs with the published protocols (KAIST miss rate, MFNet mIoU)."""


@evaluate.command("kaist-results")
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--annotations",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="KAIST test annotations, KAIST_annotation.json (2,252 images, improved annotations).",
)
@click.option(
    "--subset",
    type=click.Choice(kaist.SUBSETS),
    default=None,
    help="Evaluate one subset only; with day or night the file numbers its images within "
    "that subset (1..1455 day, 1..797 night). Default: all three, numbered over all images.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Score a file without any detection (100 % miss rate) instead of refusing it.",
)
@click.option(
    "--image-size",
    default=None,
    help="WxH of the images when they are not KAIST's 640x512: the 55 px height threshold "
    "and the 5 px border scale with it, as in md evaluate model.",
)
@click.option(
    "--groups",
    "groups_opt",
    default=None,
    help="Also the miss rate per group and the disparity: comma-separated day_night, scale "
    "(near/medium/far), occlusion (none/partial/heavy) or a per-box annotation key.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kaist_results(
    results: Path,
    annotations: Path,
    subset: str | None,
    allow_empty: bool,
    image_size: str | None,
    groups_opt: str | None,
    as_json: bool,
) -> None:
    """Log-average miss rate (percent, reasonable setting) of a KAIST RESULTS file.

    RESULTS holds one detection per line: image_index,x,y,w,h,score, with a 1-based image
    index in annotation order. The protocol is Dollár's toolbox as in the KAIST papers:
    GTs under 55 px, occluded beyond partial or crossing the 5 px border band are ignored;
    IoU 0.5; FPPI references 10^(-2:0.25:0).
    """
    ann = kaist.load_annotations(annotations)
    chosen = cast(kaist.Subset, subset or "all")
    detections = kaist.load_results(results, ann, numbering=chosen, allow_empty=allow_empty)
    subsets = (chosen,) if subset else kaist.SUBSETS
    setting = kaist.ReasonableSetting(image_size=_image_size(image_size))
    rates = kaist.miss_rates(ann, detections, subsets, setting)
    report: dict[str, Any] = {"miss_rate": rates}
    groups = parse_groups(groups_opt)
    if groups:
        fields = _annotation_box_fields(annotations, ann, groups)
        report["groups"] = kaist_groups(ann, detections, groups, setting, box_fields=fields)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"KAIST log-average miss rate, reasonable setting: {results.name}")
    for name, rate in rates.items():
        click.echo(f"  {name:<6} {rate:6.2f} %")
    for line in _groups_table(report.get("groups", {})):
        click.echo(line)


def _annotation_box_fields(
    path: Path, ann: kaist.Annotations, groups: tuple[str, ...]
) -> dict[str, Any]:
    """Extra per-box keys of the annotation JSON named in `groups` (file order = ann order)."""
    import numpy as np

    wanted = [g for g in groups if g not in ("day_night", "scale", "occlusion")]
    if not wanted:
        return {}
    rows = json.loads(path.read_text())["annotations"]
    return {
        f: np.array([str(a.get(f, "")) for a in rows], dtype=object)
        for f in wanted
        if any(f in a for a in rows)
    }


def _groups_table(groups: dict[str, Any]) -> list[str]:
    """One line per grouping: each group's metric, then worst - best and worst / best."""
    lines = []
    for name, entry in groups.items():
        metric = next(k for k in entry if k != "disparity")
        cells = "  ".join(f"{g} {_fmt(v)}" for g, v in entry[metric].items())
        d = entry["disparity"]
        gap = "n/a" if d["difference"] is None else f"{d['difference']:.2f}"
        ratio = "n/a" if d["ratio"] is None else f"{d['ratio']:.2f}"
        lines.append(f"  {name:<14} {metric}: {cells}  | worst-best {gap}, worst/best {ratio}")
    return lines


@evaluate.command("mfnet-predictions")
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="MFNet root with labels/ inside, or the labels folder itself (<name>.png, 0..8).",
)
@click.option(
    "--list",
    "list_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Image list, one name per line (e.g. test.txt). Default: every label PNG.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def mfnet_predictions(
    pred_dir: Path, labels_dir: Path, list_file: Path | None, as_json: bool
) -> None:
    """Mean accuracy and mean IoU (percent) of MFNet prediction PNGs in PRED_DIR.

    PRED_DIR holds one single-channel PNG of class indices 0..8 per image, named like its
    label and at the label's size. Means run over the 9 classes including unlabeled, leaving
    out classes without ground-truth pixels (RTFNet convention); day / night by the D / N
    name suffix.
    """
    report = mfnet.evaluate_predictions(pred_dir, labels_dir, list_file)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(_mfnet_table(report))


def _image_size(value: str | None) -> tuple[int, int]:
    if value is None:
        return kaist.KAIST_IMAGE_SIZE
    w, _, h = value.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise click.BadParameter(f"{value!r}: use WxH, e.g. 640x512", param_hint="--image-size")
    return int(w), int(h)


def _mfnet_table(report: mfnet.Report) -> str:
    """Classes as rows; accuracy and IoU for all / day / night as columns."""
    subsets = mfnet.SUBSETS
    head = "".join(f"{'acc ' + s:>11}" for s in subsets) + "".join(
        f"{'IoU ' + s:>11}" for s in subsets
    )
    lines = [f"{'class':<12}{head}"]
    per_class = report["per_class"]
    for name in mfnet.CLASSES:
        cells = [per_class[s][name]["accuracy"] for s in subsets]
        cells += [per_class[s][name]["iou"] for s in subsets]
        lines.append(f"{name:<12}" + "".join(_cell(v) for v in cells))
    means = [report["mean_accuracy"][s] for s in subsets] + [report["mean_iou"][s] for s in subsets]
    lines.append(f"{'mean':<12}" + "".join(_cell(v) for v in means))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'-':>11}" if value is None else f"{value:11.2f}"


def _thermal_factor(value: str | None) -> int | None:
    if value is None:
        return None
    if value == "none":
        return 0
    if value not in ("1", "4", "16", "64"):
        raise click.BadParameter("use 1, 4, 16, 64 or none", param_hint="--thermal-factor")
    return int(value)


@evaluate.command("model")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Dataset root (KAIST or MFNet layout) matching the checkpoint's task.",
)
@click.option(
    "--split", default="test", show_default=True, help="Split list DATA/<split>.txt to evaluate."
)
@click.option(
    "--thermal-factor",
    "thermal_factor",
    default=None,
    help="Reduce thermal by this pixel factor (1, 4, 16, 64) or 'none' for "
    "visible-only. Default: the factor the model was trained with.",
)
@click.option(
    "--save-results",
    type=click.Path(path_type=Path),
    default=None,
    help="Detection: write a KAIST-format results file here. Segmentation: write "
    "prediction PNGs into this folder.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Images per forward pass.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--latency", is_flag=True, help="Also time batch-1 inference (median ms).")
@click.option(
    "--corrupt",
    default=None,
    help="Corrupt every test image first: NAME[:SEVERITY 0-5, default 3], NAME one of "
    "thermal_noise, thermal_dead, thermal_drift, fog, blur, low_light, jpeg (seeded per "
    "sample id; see md.data.corrupt).",
)
@click.option("--corrupt-seed", type=int, default=0, show_default=True, help="Seed of --corrupt.")
@click.option(
    "--groups",
    "groups_opt",
    default=None,
    help="Also report the metric per group and the disparity (worst - best, worst / best): "
    "comma-separated day_night, scale, occlusion (detection), class (segmentation), or a "
    "FIELD of DATA/annotations.json boxes or DATA/groups.json (e.g. appearance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def model_cmd(
    checkpoint: Path,
    data: Path,
    split: str,
    thermal_factor: str | None,
    save_results: Path | None,
    batch_size: int,
    device: str,
    latency: bool,
    corrupt: str | None,
    corrupt_seed: int,
    groups_opt: str | None,
    as_json: bool,
) -> None:
    """Evaluate a teacher or student CHECKPOINT (or a file from md export) on a dataset split.

    Detection: KAIST log-average miss rate (reasonable setting, thresholds scaled to the
    image size) for all / day / night. Segmentation: MFNet mean accuracy and mean IoU.
    """
    from md.data.corrupt import get_corruption
    from md.deploy.exported import exported_format

    corruption = None if corrupt is None else get_corruption(corrupt, seed=corrupt_seed)
    groups = parse_groups(groups_opt)
    if exported_format(checkpoint) is not None:
        if groups:
            raise click.UsageError(
                "--groups works on checkpoints; evaluate the .pt the graph was exported from"
            )
        tf = _thermal_factor(thermal_factor)
        result = _evaluate_exported(
            checkpoint, data, split, tf, save_results, batch_size, latency, corruption
        )
    else:
        from md.eval.model_eval import evaluate_model

        result = evaluate_model(
            checkpoint,
            data,
            split=split,
            thermal_factor=_thermal_factor(thermal_factor),
            save_results=save_results,
            batch_size=batch_size,
            device=device,
            latency=latency,
            corrupt=corruption,
            groups=groups,
        )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{result['model_kind']} {checkpoint} on {data} [{split}], "
        f"thermal factor {result['thermal_factor']}, {result['samples']} images"
        + (f", corrupted: {result['corruption']}" if result.get("corruption") else "")
    )
    metrics = ("miss_rate",) if result["task"] == "detection" else ("mean_accuracy", "mean_iou")
    for m in metrics:
        row = "  ".join(f"{s} {_fmt(result[m].get(s))}" for s in ("all", "day", "night"))
        click.echo(f"  {m:<14} {row}")
    for line in _groups_table(result.get("groups", {})):
        click.echo(line)
    if "latency" in result:
        lat = result["latency"]
        click.echo(
            f"  latency        {lat['median_ms']:.2f} ms/image ({lat['device']}, "
            f"{lat['dtype']}, batch 1)"
        )


def _evaluate_exported(
    path: Path,
    data: Path,
    split: str,
    thermal_factor: int | None,
    save_results: Path | None,
    batch_size: int,
    latency: bool,
    corrupt: Any = None,
) -> dict[str, Any]:
    """An exported graph through its predictor (ONNX Runtime / TorchScript, on the CPU)."""
    from md.deploy.evaluate import evaluate_predictor
    from md.deploy.exported import open_exported
    from md.errors import MdError

    predictor = open_exported(path)
    if thermal_factor is not None and thermal_factor != predictor.info.thermal_factor:
        have = predictor.info.thermal_factor or "none"
        raise MdError(
            f"{path}: the exported graph takes thermal factor {have}; leave out "
            "--thermal-factor, or export a model trained at that factor"
        )
    result = evaluate_predictor(
        predictor,
        data,
        split=split,
        save_results=save_results,
        corrupt=corrupt,
        batch_size=batch_size,
        latency=latency,
    )
    result["corruption"] = None if corrupt is None else corrupt.label
    return result


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:6.2f}"
