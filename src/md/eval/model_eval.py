"""`md evaluate model`: run a checkpoint (teacher, decision baseline or student) over a split.

Detection -> KAIST log-average miss rate (reasonable setting, thresholds scaled to the image
size) for all/day/night, plus a results file in the KAIST format; segmentation -> MFNet mean
accuracy / mean IoU (all/day/night, per class) plus prediction PNGs. Day/night come from each
sample's group, so any split of a KAIST- or MFNet-layout dataset can be scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from md.data import open_dataset
from md.data.collate import collate
from md.data.transforms import reduce_thermal, student_input
from md.errors import MdError
from md.eval import groups as group_eval
from md.eval import kaist, mfnet
from md.eval.runtime import latency_ms
from md.models import load_model
from md.models.checkpoint import file_sha256
from md.train.recipe import resolve_device

THERMAL_NONE = 0  # sentinel for "visible-only" in --thermal-factor


def model_inputs(
    model: nn.Module,
    kind: str,
    batch: dict[str, Any],
    thermal_factor: int,
) -> tuple[torch.Tensor, ...]:
    """The forward arguments of `model` for a batch (thermal reduced by `thermal_factor`)."""
    visible, thermal = batch["visible"], batch["thermal"]
    if thermal_factor != 1 and thermal_factor != THERMAL_NONE:
        thermal = reduce_thermal(thermal, thermal_factor)
    if kind != "student":
        return (visible, thermal)
    if getattr(model, "in_channels", None) == 3 or thermal_factor == THERMAL_NONE:
        return (student_input(visible, None),)
    return (student_input(visible, thermal),)


def _head(model: nn.Module) -> Any:
    head = getattr(model, "head", None)
    return head if head is not None else model.visible.head  # type: ignore[union-attr]


Corrupt = Callable[
    [torch.Tensor, torch.Tensor, Sequence[str]], tuple[torch.Tensor, torch.Tensor]
]  # (visible, thermal, sample ids) -> (visible, thermal): md.data.corrupt


def predict_batches(
    model: nn.Module,
    kind: str,
    loader: DataLoader,
    thermal_factor: int,
    device: torch.device,
    corrupt: Corrupt | None = None,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Yields (batch, predictions): detection lists of {boxes, scores}; segmentation (B,H,W).

    `corrupt` changes the full-resolution images first (before the thermal reduction)."""
    head = _head(model)
    with torch.inference_mode():
        for batch in loader:
            if corrupt is not None:
                visible, thermal = corrupt(batch["visible"], batch["thermal"], batch["id"])
                batch = {**batch, "visible": visible, "thermal": thermal}
            args = [a.to(device) for a in model_inputs(model, kind, batch, thermal_factor)]
            pred = model(*args)["pred"]
            if model.task == "detection":
                yield batch, head.predict(pred, score_thresh=0.01)
            else:
                yield batch, head.predict(pred).cpu()


def default_thermal_factor(ckpt: dict[str, Any]) -> int:
    """A student evaluates at the thermal factor it was trained with; teachers at full res."""
    tf = ckpt.get("config", {}).get("thermal_factor", 1)
    return THERMAL_NONE if tf in (None, "none", THERMAL_NONE) else int(tf)


def evaluate_model(
    ckpt_path: str | Path,
    data: str | Path,
    *,
    split: str | None = "test",
    thermal_factor: int | None = None,
    save_results: str | Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    latency: bool = False,
    corrupt: Corrupt | None = None,
    groups: Sequence[str] = (),
) -> dict[str, Any]:
    """Score a checkpoint on a dataset split; see the module docstring for what is returned.

    `corrupt` (`md.data.corrupt.get_corruption`) corrupts every sample's images first.
    `groups` (`md.eval.groups`): also the metric per group and the disparity, under
    ``result["groups"]``; FIELD groupings read DATA/annotations.json (per-box keys) or
    DATA/groups.json (per-image values)."""
    model, ckpt = load_model(ckpt_path)
    ds = open_dataset(data, split=split)
    if ds.task != ckpt["task"]:
        raise MdError(
            f"{ckpt_path}: a {ckpt['task']} checkpoint cannot be evaluated on "
            f"{data} ({ds.layout} layout, {ds.task}); use a {ds.task} checkpoint"
        )
    tf = default_thermal_factor(ckpt) if thermal_factor is None else thermal_factor
    dev = resolve_device(device)
    model.to(dev)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    kind = ckpt["model_kind"]
    stream = predict_batches(model, kind, loader, tf, dev, corrupt)
    if ds.task == "detection":
        result = _score_detection(ds, stream, save_results, groups, Path(data))
    else:
        result = _score_segmentation(stream, save_results)
        if groups:
            result["groups"] = group_eval.mfnet_groups(result, groups)
    result.update(
        {
            "checkpoint": str(ckpt_path),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "model_kind": kind,
            "task": ds.task,
            "split": split,
            "samples": len(ds),
            "thermal_factor": "none" if tf == THERMAL_NONE else tf,
            "corruption": getattr(corrupt, "label", None if corrupt is None else repr(corrupt)),
        }
    )
    if latency:
        result["latency"] = measure_latency(model, kind, ds[0], tf, dev)
    return result


def _score_detection(
    ds: Any,
    stream: Iterator[tuple[dict[str, Any], Any]],
    save_results: str | Path | None,
    groups: Sequence[str] = (),
    data: Path | None = None,
) -> dict[str, Any]:
    dets, gts, size = [], [], None
    names: list[str] = []
    day_night: list[str] = []
    for batch, preds in stream:
        size = tuple(batch["visible"].shape[-2:][::-1])  # (W, H)
        for i, p in enumerate(preds):
            dets.append(
                kaist.ImageDetections(
                    p["boxes"].cpu().numpy().astype(np.float64),
                    p["scores"].cpu().numpy().astype(np.float64),
                )
            )
            boxes = batch["boxes"][i].numpy().astype(np.float64)
            gts.append(
                kaist.ImageGroundTruth(
                    boxes,
                    ignore=batch["box_ignore"][i].numpy(),
                    occlusion=batch["box_occlusion"][i].numpy(),
                    height=boxes[:, 3] - boxes[:, 1],
                )
            )
            day_night.append(batch["group"][i])
            # ids name images for FIELD groupings; md predict's batches may carry none
            names.append(str(batch["id"][i]) if "id" in batch else str(len(names)))
    setting = kaist.ReasonableSetting(image_size=(int(size[0]), int(size[1])))  # type: ignore[index]
    matches = kaist.match_detections(
        kaist.annotations_from_arrays(gts), kaist.detections_from_arrays(dets), setting
    )
    rates: dict[str, float | None] = {}
    for subset in ("all", "day", "night"):
        idx = (
            np.arange(len(day_night))
            if subset == "all"
            else np.flatnonzero(np.asarray(day_night) == subset)
        )
        rates[subset] = kaist.log_average_miss_rate(matches, idx) if len(idx) else None
    if save_results is not None:
        kaist.write_results(save_results, dets)
    result: dict[str, Any] = {
        "miss_rate": rates,
        "setting": {"image_size": list(setting.image_size), "min_height": setting.height_threshold},
    }
    if groups:
        annotations = kaist.annotations_from_arrays(gts, names)
        box_fields, image_fields = group_eval.annotation_fields(data, names, gts, groups)
        result["groups"] = group_eval.kaist_groups(
            annotations,
            kaist.detections_from_arrays(dets),
            groups,
            setting,
            image_groups=day_night,
            box_fields=box_fields,
            image_fields=image_fields,
        )
    return result


def _score_segmentation(
    stream: Iterator[tuple[dict[str, Any], Any]], save_results: str | Path | None
) -> dict[str, Any]:
    names, labels, preds = [], [], []
    out_dir = Path(save_results) if save_results is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for batch, pred in stream:
        for i, name in enumerate(batch["id"]):
            p = pred[i].numpy().astype(np.uint8)
            names.append(name)
            labels.append(batch["labels"][i].numpy())
            preds.append(p)
            if out_dir is not None:
                Image.fromarray(p, mode="L").save(out_dir / f"{name}.png")
    return dict(mfnet.evaluate_arrays(names, labels, preds))


def measure_latency(
    model: nn.Module, kind: str, sample: dict[str, Any], thermal_factor: int, device: torch.device
) -> dict[str, Any]:
    """Batch-1 latency of the model's forward on one sample (fp32)."""
    batch = collate([sample])
    args = [a.to(device) for a in model_inputs(model, kind, batch, thermal_factor)]
    stats = latency_ms(lambda: model(*args), device)
    return {
        **stats,
        "device": str(device),
        "dtype": "float32",
        "image_size": list(batch["visible"].shape[-2:]),
    }
