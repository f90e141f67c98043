"""Per-group evaluation: the metric of each group and the disparity between groups.

KAIST (detection, log-average miss rate, lower is better):

- ``day_night``: the reasonable setting on the day and on the night images.
- ``scale``: near (GT height >= 115 px), medium (45-115 px) and far (< 45 px) at KAIST's
  512 rows, scaled with the image height like the reasonable thresholds; every occlusion
  level counts (0, 1, 2) and GTs outside the band are "don't care" (ignored, so a detection
  on them is neither a hit nor a false positive). A band is ``lo <= height < hi``.
- ``occlusion``: none (0), partial (1), heavy (2), each at the reasonable height (>= 55 px);
  GTs of the other levels are "don't care".
- any other FIELD: a per-box or per-image attribute from the annotations (for example the
  synthetic generator's ``appearance``); per-box: the GTs of other values are "don't care",
  per-image: the images holding that value.

MFNet (segmentation, mean IoU, higher is better): ``day_night`` and ``class`` (per class).

Disparity of a grouping: ``worst - best`` and ``worst / best`` over the groups that have a
metric (groups without ground truth are reported as None and left out); the ratio is None
when best is 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from md.errors import DataError, MdError
from md.eval import kaist

SCALE_BANDS: dict[str, tuple[float, float]] = {
    "near": (115.0, math.inf),
    "medium": (45.0, 115.0),
    "far": (0.0, 45.0),
}  # px at 512 rows, lo <= height < hi
OCCLUSION_LEVELS: dict[str, int] = {"none": 0, "partial": 1, "heavy": 2}
BUILTIN = ("day_night", "scale", "occlusion")


def parse_groups(value: str | None) -> tuple[str, ...]:
    """``"day_night,scale"`` -> ("day_night", "scale"); empty parts are an error."""
    if not value:
        return ()
    names = tuple(v.strip() for v in value.split(","))
    if any(not n for n in names):
        raise MdError(f"--groups {value!r}: give comma-separated names, e.g. day_night,scale")
    return names


def disparity(metrics: Mapping[str, float | None], higher_is_better: bool) -> dict[str, Any]:
    """Worst and best group, worst - best and worst / best (None where undefined)."""
    known = {k: v for k, v in metrics.items() if v is not None and not math.isnan(v)}
    if not known:
        return {"worst": None, "best": None, "difference": None, "ratio": None}
    pick = (min, max) if higher_is_better else (max, min)
    worst = pick[0](known, key=lambda k: known[k])
    best = pick[1](known, key=lambda k: known[k])
    w, b = known[worst], known[best]
    diff = (b - w) if higher_is_better else (w - b)
    ratio = None if b == 0 else w / b
    return {"worst": worst, "best": best, "difference": diff, "ratio": ratio}


def _lamr(
    annotations: kaist.Annotations,
    detections: kaist.Detections,
    setting: kaist.ReasonableSetting,
    images: np.ndarray | None = None,
) -> float | None:
    matches = kaist.match_detections(annotations, detections, setting)
    idx = np.arange(annotations.n_images) if images is None else images
    if idx.size == 0:
        return None
    rate = kaist.log_average_miss_rate(matches, idx)
    return None if math.isnan(rate) else rate


def kaist_groups(
    annotations: kaist.Annotations,
    detections: kaist.Detections,
    groups: Sequence[str],
    setting: kaist.ReasonableSetting = kaist.KAIST_REASONABLE,
    *,
    image_groups: Sequence[str] | None = None,
    box_fields: Mapping[str, np.ndarray] | None = None,
    image_fields: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """{grouping: {"miss_rate": {group: LAMR or None}, "disparity": {...}}}.

    `image_groups`: day / night per image (default: from KAIST set numbers in the names).
    `box_fields`: per-box attribute arrays (G,) aligned with `annotations`; `image_fields`:
    per-image attribute lists (N,). A FIELD found in neither is an error naming the fix.
    """
    out: dict[str, Any] = {}
    box_fields = box_fields or {}
    image_fields = image_fields or {}
    for name in groups:
        rates: dict[str, float | None] = {}
        if name == "day_night":
            day_night = (
                np.asarray(image_groups)
                if image_groups is not None
                else np.array([_kaist_day_night(n) for n in annotations.names])
            )
            for g in ("day", "night"):
                rates[g] = _lamr(annotations, detections, setting, np.flatnonzero(day_night == g))
        elif name == "scale":
            for g, (lo, hi) in SCALE_BANDS.items():
                band = replace(setting, min_height=lo, max_height=hi, occlusions=(0, 1, 2))
                rates[g] = _lamr(annotations, detections, band)
        elif name == "occlusion":
            for g, level in OCCLUSION_LEVELS.items():
                rates[g] = _lamr(annotations, detections, replace(setting, occlusions=(level,)))
        elif name in box_fields:
            values = np.asarray(box_fields[name]).astype(str)
            for g in sorted(set(values.tolist())):
                only = replace(annotations, ignore=annotations.ignore | (values != g))
                rates[g] = _lamr(only, detections, setting)
        elif name in image_fields:
            values = np.asarray(image_fields[name]).astype(str)
            for g in sorted(set(values.tolist())):
                rates[g] = _lamr(annotations, detections, setting, np.flatnonzero(values == g))
        else:
            have = sorted({*BUILTIN, *box_fields, *image_fields})
            raise MdError(
                f"--groups {name}: no such grouping in these annotations; use one of "
                f"{', '.join(have)} (a FIELD must be a per-box or per-image annotation key)"
            )
        out[name] = {"miss_rate": rates, "disparity": disparity(rates, higher_is_better=False)}
    return out


def _kaist_day_night(name: str) -> str:
    found = kaist._set_number(name)
    if found in kaist.DAY_SETS:
        return "day"
    return "night" if found in kaist.NIGHT_SETS else "unknown"


def mfnet_groups(report: Mapping[str, Any], groups: Sequence[str]) -> dict[str, Any]:
    """{grouping: {"mean_iou" | "iou": {...}, "disparity": {...}}} from an MFNet report."""
    out: dict[str, Any] = {}
    for name in groups:
        if name == "day_night":
            rates = {g: report["mean_iou"].get(g) for g in ("day", "night")}
            out[name] = {"mean_iou": rates, "disparity": disparity(rates, higher_is_better=True)}
        elif name == "class":
            per = report["per_class"]["all"]
            rates = {c: v["iou"] for c, v in per.items()}
            out[name] = {"iou": rates, "disparity": disparity(rates, higher_is_better=True)}
        else:
            raise MdError(
                f"--groups {name}: segmentation groups are day_night and class; use those"
            )
    return out


STANDARD_KEYS = {"id", "image_id", "category_id", "bbox", "height", "occlusion", "ignore", "area"}


def annotation_fields(
    data: Path | None,
    names: Sequence[str],
    ground_truth: Sequence[kaist.ImageGroundTruth],
    groups: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Per-box and per-image attributes for the FIELD groupings in `groups`.

    Per-box: extra keys of DATA/annotations.json (KAIST_annotation.json format), matched to
    each image's boxes in file order. Per-image: DATA/groups.json, ``{FIELD: {id: value}}``.
    """
    wanted = [g for g in groups if g not in BUILTIN]
    box: dict[str, np.ndarray] = {}
    image: dict[str, list[str]] = {}
    if not wanted or data is None:
        return box, image
    ann_path = data / "annotations.json"
    if ann_path.is_file():
        box = _box_fields(ann_path, names, ground_truth, wanted)
    groups_path = data / "groups.json"
    if groups_path.is_file():
        try:
            table = json.loads(groups_path.read_text())
            for field in wanted:
                if field in table and field not in box:
                    image[field] = [str(table[field][n]) for n in names]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{groups_path}: not a groups file ({type(e).__name__}: {e}); write "
                '{"FIELD": {"sample id": "value", ...}} covering every evaluated sample'
            ) from None
    return box, image


def _box_fields(
    path: Path,
    names: Sequence[str],
    ground_truth: Sequence[kaist.ImageGroundTruth],
    wanted: Sequence[str],
) -> dict[str, np.ndarray]:
    try:
        data = json.loads(path.read_text())
        by_name = {im["id"]: im["im_name"] for im in data["images"]}
        per_image: dict[str, list[Mapping[str, Any]]] = {}
        for a in data["annotations"]:
            per_image.setdefault(by_name[a["image_id"]], []).append(a)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a KAIST annotation JSON ({type(e).__name__}: {e}); regenerate it"
        ) from None
    present = {k for rows in per_image.values() for a in rows for k in a} - STANDARD_KEYS
    out: dict[str, np.ndarray] = {}
    for field in wanted:
        if field not in present:
            continue
        values: list[str] = []
        for name, gt in zip(names, ground_truth, strict=True):
            rows = per_image.get(name, [])
            if len(rows) != len(gt.boxes):
                raise DataError(
                    f"{path}: {name} has {len(rows)} boxes, the dataset's annotation "
                    f"{len(gt.boxes)}; regenerate annotations.json from the same data"
                )
            values += [str(a.get(field, "")) for a in rows]
        out[field] = np.array(values, dtype=object)
    return out
