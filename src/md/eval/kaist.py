"""KAIST multispectral pedestrian detection: log-average miss rate, reasonable setting.

The protocol is Dollár's Caltech toolbox (`bbGt evalRes` / `compRoc`, `dbEval`) on the KAIST
test set with the improved annotations, as used by MD Table 5 and reproduced to 0.01 of the
published numbers (`tests/eval/test_kaist_published.py`):

1. **Ground truth.** A box is *ignored* if its `ignore` flag is set, its height is below 55 px,
   its occlusion is not 0 (none) or 1 (partial), or it crosses the border band: x < 5, y < 5,
   x + w > 635 or y + h > 507 (boxes are ``x, y, w, h`` in pixels, exactly as given; no
   aspect-ratio normalisation). Ignored boxes stay in the image as "don't care" regions.
2. **Detections.** Per image at most 1,000, the highest scores first (stable sort: equal scores
   keep their file order).
3. **Matching**, per image, detections in descending score: a detection takes the still
   unmatched *regular* GT of highest IoU if that IoU ≥ 0.5 (on equal IoU the later GT wins,
   as in `evalRes`); otherwise, if its overlap with an *ignored* GT, intersection over the
   *detection's* area, is ≥ 0.5, it is dropped (an ignored GT absorbs any number of
   detections); otherwise it is a false positive. Regular GTs left unmatched are misses.
4. **Curve.** Over the images of a subset, detections sorted by descending score (stable:
   image order, then per-image order), dropped ones removed; FPPI = cumulative FP / number
   of images in the subset (images without detections count), recall = cumulative TP /
   number of regular GTs in the subset (GTs in images without detections count too).
5. **Miss rate.** At the 9 FPPI references 10^(-2:0.25:0) (exact powers, not rounded to four
   decimals) the recall is the one at the last curve point whose FPPI ≤ reference, or 0 when
   no point qualifies; LAMR = exp(mean(log(max(1e-10, 1 − recall)))), reported in percent.

Subsets: ``all``; ``day`` = images of set06–set08 (1,455); ``night`` = set09–set11 (797).
Results files hold one detection per line, ``image_index,x,y,w,h,score`` with a 1-based
index into the images in annotation order (or into one subset's images, see `load_results`).

For datasets of other image sizes, `ReasonableSetting(image_size=(W, H))` scales the 55 px
height threshold with H / 512 and the 5 px border band with W / 640 and H / 512.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from md.errors import DataError, MdError

Subset = Literal["all", "day", "night"]
SUBSETS: tuple[Subset, ...] = get_args(Subset)
DAY_SETS = (6, 7, 8)  # KAIST test sets recorded in daylight
NIGHT_SETS = (9, 10, 11)
# FPPI references of the log-average miss rate: 10^(-2:0.25:0), exact (not 0.0178, 0.0316...).
FPPI_REFERENCES = 10.0 ** np.linspace(-2.0, 0.0, 9)
KAIST_IMAGE_SIZE = (640, 512)  # (width, height) of KAIST frames


@dataclass(frozen=True)
class ReasonableSetting:
    """The "reasonable" evaluation setting; thresholds scale with the evaluated image size.

    Defaults are the exact KAIST numbers. For images of another size pass
    ``image_size=(W, H)``: the height threshold becomes ``min_height * H / 512`` and the
    border band ``border * W / 640`` (x) and ``border * H / 512`` (y).
    """

    image_size: tuple[int, int] = KAIST_IMAGE_SIZE  # (width, height) in pixels
    min_height: float = 55.0  # px at KAIST's 512 rows; smaller GTs are ignored
    border: float = 5.0  # px band at 640x512; GTs reaching into it are ignored
    occlusions: tuple[int, ...] = (0, 1)  # kept occlusion levels: none, partial
    iou_threshold: float = 0.5  # IoU with regular GTs, IoA with ignored GTs
    max_detections: int = 1000  # per image, top scores
    max_height: float = math.inf  # px at 512 rows; GTs this tall or taller are ignored

    @property
    def height_threshold(self) -> float:
        """Minimum GT height in pixels at `image_size`."""
        return self.min_height * self.image_size[1] / KAIST_IMAGE_SIZE[1]

    @property
    def height_ceiling(self) -> float:
        """GTs of at least this height (pixels at `image_size`) are ignored; inf = none."""
        return self.max_height * self.image_size[1] / KAIST_IMAGE_SIZE[1]

    @property
    def border_box(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max): a GT must lie inside to count (5, 5, 635, 507)."""
        width, height = self.image_size
        bx = self.border * width / KAIST_IMAGE_SIZE[0]
        by = self.border * height / KAIST_IMAGE_SIZE[1]
        return bx, by, width - bx, height - by


KAIST_REASONABLE = ReasonableSetting()


@dataclass(frozen=True)
class Annotations:
    """Ground truth of an image set, flattened: one row per GT box (G rows, N images)."""

    names: tuple[str, ...]  # (N,) image keys in evaluation order, e.g. set06/V000/I00019
    image: np.ndarray  # (G,) int64 0-based image index of each box
    boxes: np.ndarray  # (G, 4) float64 x, y, w, h in pixels
    height: np.ndarray  # (G,) float64 annotated height (KAIST JSON `height`, = box h there)
    occlusion: np.ndarray  # (G,) int64 0 none, 1 partial, 2 heavy
    ignore: np.ndarray  # (G,) bool annotated ignore flag
    source: str = "<memory>"  # file the annotations came from, for error messages

    @property
    def n_images(self) -> int:
        return len(self.names)

    def subset_images(self, subset: Subset) -> np.ndarray:
        """0-based indices of the subset's images, in annotation order."""
        if subset == "all":
            return np.arange(self.n_images)
        if subset not in SUBSETS:
            raise MdError(f"unknown KAIST subset {subset!r}; use one of {', '.join(SUBSETS)}")
        sets = DAY_SETS if subset == "day" else NIGHT_SETS
        numbers = [_set_number(name) for name in self.names]
        picked = np.flatnonzero([n in sets for n in numbers])
        if picked.size == 0:
            raise MdError(
                f"{self.source}: no {subset} images (KAIST {subset} = set"
                f"{sets[0]:02d}-set{sets[-1]:02d} by image name); evaluate subset 'all'"
            )
        return picked


@dataclass(frozen=True)
class Detections:
    """Detections of an image set, flattened: one row per box (D rows)."""

    image: np.ndarray  # (D,) int64 0-based image index into Annotations.names
    boxes: np.ndarray  # (D, 4) float64 x, y, w, h in pixels
    scores: np.ndarray  # (D,) float64 confidence, higher = more confident


class ImageDetections(NamedTuple):
    """Detections of one image, as a model produces them."""

    boxes: np.ndarray  # (D, 4) x1, y1, x2, y2 in pixels
    scores: np.ndarray  # (D,)


class ImageGroundTruth(NamedTuple):
    """Ground truth of one image; absent fields mean: not ignored, no occlusion, box height."""

    boxes: np.ndarray  # (G, 4) x1, y1, x2, y2 in pixels
    ignore: np.ndarray | None = None  # (G,) bool
    occlusion: np.ndarray | None = None  # (G,) int 0 none, 1 partial, 2 heavy
    height: np.ndarray | None = None  # (G,) px; defaults to y2 - y1


@dataclass(frozen=True)
class Matches:
    """Outcome of matching: per detection (capped, in image then descending-score order)."""

    image: np.ndarray  # (D',) int64 image index
    score: np.ndarray  # (D',) float64
    label: np.ndarray  # (D',) int8: 1 true positive, 0 false positive, -1 dropped (ignored GT)
    positives: np.ndarray  # (N,) int64 regular (non-ignored) GTs per image


def _set_number(name: str) -> int | None:
    found = re.search(r"set(\d+)", name)
    return int(found.group(1)) if found else None


# --------------------------------------------------------------------------- loading / writing


def load_annotations(path: str | Path) -> Annotations:
    """Read KAIST_annotation.json (COCO-like: `images` with `im_name`, `annotations`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        names = tuple(str(im["im_name"]) for im in data["images"])
        position = {im["id"]: i for i, im in enumerate(data["images"])}
        rows = [_annotation_row(a, position) for a in data["annotations"]]
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found; pass KAIST_annotation.json") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(
            f"{path}: not a KAIST annotation JSON ({type(e).__name__}: {e}); pass "
            "KAIST_annotation.json with `images` (id, im_name) and `annotations` (image_id, bbox)"
        ) from None
    table = np.array(rows, dtype=np.float64).reshape(-1, 8)
    return Annotations(
        names=names,
        image=table[:, 0].astype(np.int64),
        boxes=table[:, 1:5],
        height=table[:, 5],
        occlusion=table[:, 6].astype(np.int64),
        ignore=table[:, 7] != 0,
        source=str(path),
    )


def _annotation_row(ann: Mapping[str, Any], position: Mapping[Any, int]) -> list[float]:
    """[image, x, y, w, h, height, occlusion, ignore]; `height` defaults to the box height."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    occlusion, ignore = ann.get("occlusion", 0), ann.get("ignore", 0)
    return [position[ann["image_id"]], x, y, w, h, float(ann.get("height", h)), occlusion, ignore]


def load_results(
    path: str | Path,
    annotations: Annotations,
    numbering: Subset = "all",
    *,
    allow_empty: bool = False,
) -> Detections:
    """Read a results file: ``image_index,x,y,w,h,score`` per line (commas or blanks).

    `image_index` is 1-based into the images of `numbering` in annotation order: "all" (the
    usual 1..2252), or "day" / "night" for files that number within one subset (1..1455,
    1..797). Malformed lines and indices out of range raise `MdError` naming file and line.
    A file without a single detection is refused unless `allow_empty`: it scores a 100 %
    miss rate, far more often a detector that wrote nothing than a real result.
    """
    path = Path(path)
    images = annotations.subset_images(numbering)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: results file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read results file ({e})") from None
    rows = [
        _parse_result_line(path, n, line, images.size, numbering)
        for n, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not rows and not allow_empty:
        raise DataError(
            f"{path}: results file holds no detections (it would score a 100 % miss rate); "
            "check that the detector wrote its output, or pass --allow-empty to score it"
        )
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return Detections(
        image=images[table[:, 0].astype(np.int64) - 1],
        boxes=table[:, 1:5],
        scores=table[:, 5],
    )


def _parse_result_line(
    path: Path, lineno: int, line: str, n_images: int, numbering: Subset
) -> list[float]:
    fields = re.split(r"[,\s]+", line.strip())
    try:
        values = [float(f) for f in fields]
    except ValueError:
        values = []
    where = f"{path}:{lineno}"
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        raise DataError(
            f"{where}: expected 6 numbers 'image_index,x,y,w,h,score', got {line.strip()[:80]!r};"
            " fix or remove the line"
        )
    index, _, _, w, h, _ = values
    if index != int(index) or not 1 <= index <= n_images:
        raise DataError(
            f"{where}: image index {fields[0]} is not one of 1..{n_images} (1-based over the "
            f"'{numbering}' images in annotation order); number the images that way, or evaluate "
            "with the numbering the file uses (CLI: no --subset for files numbered over all)"
        )
    if w < 0 or h < 0:
        raise DataError(
            f"{where}: negative box width/height in {line.strip()[:80]!r}; boxes are x,y,w,h"
        )
    return values


def write_results(path: str | Path, detections: Sequence[ImageDetections]) -> None:
    """Write per-image detections (xyxy) as a KAIST results file, images numbered from 1."""
    lines = []
    for index, (boxes, scores) in enumerate(detections, start=1):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        wh = boxes[:, 2:] - boxes[:, :2]
        for (x, y), (w, h), s in zip(boxes[:, :2], wh, np.asarray(scores).reshape(-1), strict=True):
            lines.append(f"{index},{x:.4f},{y:.4f},{w:.4f},{h:.4f},{s:.8f}\n")
    Path(path).write_text("".join(lines))


# --------------------------------------------------------------------------- in-memory inputs


def annotations_from_arrays(
    ground_truth: Sequence[ImageGroundTruth], names: Sequence[str] | None = None
) -> Annotations:
    """Flatten per-image ground truth (xyxy boxes); `names` enable the day/night subsets."""
    names = tuple(names) if names is not None else tuple(str(i) for i in range(len(ground_truth)))
    if len(names) != len(ground_truth):
        raise ValueError(f"{len(names)} names for {len(ground_truth)} images")
    parts = [_gt_columns(gt) for gt in ground_truth]
    counts = [len(p[0]) for p in parts]
    boxes = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 4))
    return Annotations(
        names=names,
        image=np.repeat(np.arange(len(parts)), counts).astype(np.int64),
        boxes=boxes,
        height=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0),
        occlusion=np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64),
        ignore=np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, bool),
    )


def _gt_columns(gt: ImageGroundTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xywh = _xyxy_to_xywh(gt.boxes)
    n = len(xywh)
    height = xywh[:, 3] if gt.height is None else np.asarray(gt.height, np.float64).reshape(n)
    occ = np.zeros(n, np.int64) if gt.occlusion is None else np.asarray(gt.occlusion, np.int64)
    ignore = np.zeros(n, bool) if gt.ignore is None else np.asarray(gt.ignore, bool)
    return xywh, height, occ.reshape(n), ignore.reshape(n)


def detections_from_arrays(detections: Sequence[ImageDetections]) -> Detections:
    """Flatten per-image detections (xyxy boxes, scores) in image order."""
    boxes = [_xyxy_to_xywh(d.boxes) for d in detections]
    counts = [len(b) for b in boxes]
    return Detections(
        image=np.repeat(np.arange(len(boxes)), counts).astype(np.int64),
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        scores=(
            np.concatenate([np.asarray(d.scores, np.float64).reshape(-1) for d in detections])
            if detections
            else np.zeros(0)
        ),
    )


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)


# --------------------------------------------------------------------------- protocol


def ignored_ground_truth(
    annotations: Annotations, setting: ReasonableSetting = KAIST_REASONABLE
) -> np.ndarray:
    """(G,) bool: GTs outside the setting (flag, height, occlusion, border band)."""
    x, y, w, h = annotations.boxes.T
    x0, y0, x1, y1 = setting.border_box
    return (
        annotations.ignore
        | (annotations.height < setting.height_threshold)
        | (annotations.height >= setting.height_ceiling)
        | ~np.isin(annotations.occlusion, setting.occlusions)
        | (x < x0)
        | (y < y0)
        | (x + w > x1)
        | (y + h > y1)
    )


def match_detections(
    annotations: Annotations,
    detections: Detections,
    setting: ReasonableSetting = KAIST_REASONABLE,
) -> Matches:
    """Cap detections per image and label each TP / FP / dropped (see the module docstring)."""
    n = annotations.n_images
    # image ascending, then score descending; lexsort is stable, so ties keep file order
    order = np.lexsort((-detections.scores, detections.image))
    image, boxes, scores = (
        a[order] for a in (detections.image, detections.boxes, detections.scores)
    )
    rank = _rank_within_image(image)
    keep = rank < setting.max_detections
    image, boxes, scores, rank = image[keep], boxes[keep], scores[keep], rank[keep]

    ignored = ignored_ground_truth(annotations, setting)
    regular, regular_valid = _pad_per_image(annotations, ~ignored)
    iou = _overlap(boxes, regular[image], regular_valid[image], over_detection=False)
    matched = _greedy_match(iou, image, rank, n, setting.iou_threshold)
    ignore_boxes, ignore_valid = _pad_per_image(annotations, ignored)
    ioa = _overlap(boxes, ignore_boxes[image], ignore_valid[image], over_detection=True)
    dropped = ~matched & (ioa >= setting.iou_threshold).any(axis=1)

    label = np.zeros(len(image), np.int8)
    label[matched] = 1
    label[dropped] = -1
    positives = np.bincount(annotations.image[~ignored], minlength=n).astype(np.int64)
    return Matches(image=image, score=scores, label=label, positives=positives)


def _rank_within_image(image: np.ndarray) -> np.ndarray:
    """0-based position of each row within its run of equal (sorted) image indices."""
    if image.size == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    counts = np.diff(np.r_[starts, image.size])
    return np.arange(image.size) - np.repeat(starts, counts)


def _pad_per_image(annotations: Annotations, select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selected GT boxes as (N, P, 4) padded per image, with a (N, P) validity mask."""
    image = annotations.image[select]
    boxes = annotations.boxes[select]
    order = np.argsort(image, kind="stable")  # keep annotation order within an image
    image, boxes = image[order], boxes[order]
    slot = _rank_within_image(image)
    width = int(slot.max()) + 1 if slot.size else 0
    padded = np.zeros((annotations.n_images, width, 4))
    valid = np.zeros((annotations.n_images, width), bool)
    padded[image, slot] = boxes
    valid[image, slot] = True
    return padded, valid


def _overlap(dt: np.ndarray, gt: np.ndarray, valid: np.ndarray, over_detection: bool) -> np.ndarray:
    """(D, P) IoU of dt (D, 4) with gt (D, P, 4), or intersection / dt area for ignored GTs.

    Same arithmetic as `bbGt compOas` (x2 = x + w; union = dt area + gt area − intersection).
    """
    dx1, dy1 = dt[:, None, 0], dt[:, None, 1]
    dx2, dy2 = dx1 + dt[:, None, 2], dy1 + dt[:, None, 3]
    gx1, gy1 = gt[..., 0], gt[..., 1]
    gx2, gy2 = gx1 + gt[..., 2], gy1 + gt[..., 3]
    w = np.minimum(dx2, gx2) - np.maximum(dx1, gx1)
    h = np.minimum(dy2, gy2) - np.maximum(dy1, gy1)
    hit = (w > 0) & (h > 0) & valid
    inter = np.where(hit, w * h, 0.0)
    dt_area = dt[:, None, 2] * dt[:, None, 3]
    union = dt_area if over_detection else dt_area + gt[..., 2] * gt[..., 3] - inter
    union = np.broadcast_to(union, inter.shape)
    return np.divide(inter, union, out=np.zeros_like(inter), where=hit & (union > 0))


def _greedy_match(
    iou: np.ndarray, image: np.ndarray, rank: np.ndarray, n_images: int, threshold: float
) -> np.ndarray:
    """(D,) bool: detection matched a regular GT; greedy in score order, one dt per GT.

    Detections of different images are independent, so all detections of the same rank
    (at most one per image) are matched at once; only ranks with a candidate are visited.
    """
    hit = iou >= threshold
    matched = np.zeros(len(iou), bool)
    taken = np.zeros((n_images, iou.shape[1]), bool)
    candidates = np.flatnonzero(hit.any(axis=1))
    if candidates.size == 0:
        return matched
    candidates = candidates[np.argsort(rank[candidates], kind="stable")]
    for group in np.split(candidates, np.flatnonzero(np.diff(rank[candidates])) + 1):
        im = image[group]
        free = hit[group] & ~taken[im]
        found = free.any(axis=1)
        # highest IoU among free GTs; on ties the last one, as bbGt evalRes does
        best = iou.shape[1] - 1 - np.argmax(np.where(free, iou[group], -1.0)[:, ::-1], axis=1)
        taken[im[found], best[found]] = True
        matched[group[found]] = True
    return matched


def log_average_miss_rate(matches: Matches, images: np.ndarray) -> float:
    """LAMR in percent over `images` (0-based indices); NaN if they hold no regular GT."""
    n_positive = int(matches.positives[images].sum())
    if n_positive == 0:
        return math.nan
    in_subset = np.isin(matches.image, images)
    label, score = matches.label[in_subset], matches.score[in_subset]
    # stable: equal scores stay in image order, then per-image order (as Matlab's sort)
    label = label[np.argsort(-score, kind="stable")]
    label = label[label >= 0]
    fppi = np.cumsum(label == 0) / len(images)
    recall = np.cumsum(label == 1) / n_positive
    last = np.searchsorted(fppi, FPPI_REFERENCES, side="right") - 1
    recall_at = np.zeros(len(FPPI_REFERENCES))
    recall_at[last >= 0] = recall[last[last >= 0]]  # no FPPI ≤ reference: recall 0
    return float(100.0 * np.exp(np.mean(np.log(np.maximum(1e-10, 1.0 - recall_at)))))


# --------------------------------------------------------------------------- entry points


def miss_rates(
    annotations: Annotations,
    detections: Detections,
    subsets: Sequence[Subset] = SUBSETS,
    setting: ReasonableSetting = KAIST_REASONABLE,
) -> dict[str, float]:
    """LAMR (percent) per subset, e.g. ``{"all": 8.13, "day": 8.28, "night": 7.86}``."""
    matches = match_detections(annotations, detections, setting)
    return {s: log_average_miss_rate(matches, annotations.subset_images(s)) for s in subsets}


def evaluate_kaist(
    annotations: Annotations,
    detections: Detections,
    subset: Subset = "all",
    setting: ReasonableSetting = KAIST_REASONABLE,
) -> float:
    """LAMR (percent) of `detections` on one subset of `annotations`."""
    return miss_rates(annotations, detections, (subset,), setting)[subset]


def evaluate_detections(
    detections: Sequence[ImageDetections],
    ground_truth: Sequence[ImageGroundTruth],
    setting: ReasonableSetting = KAIST_REASONABLE,
) -> float:
    """LAMR (percent) of per-image model outputs against per-image ground truth (xyxy)."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truth)} images")
    annotations = annotations_from_arrays(ground_truth)
    flat = detections_from_arrays(detections)
    return evaluate_kaist(annotations, flat, "all", setting)
