"""MFNet RGB-thermal semantic segmentation: mean accuracy and mean IoU (RTFNet convention).

Protocol (MD Table 6, RTFNet's `compute_results` with the unlabeled class considered):

- 9 classes: 0 unlabeled, 1 car, 2 person, 3 bike, 4 curve, 5 car_stop, 6 guardrail,
  7 color_cone, 8 bump.
- One confusion matrix C per subset, summed over its images' pixels: rows = ground truth,
  columns = prediction.
- Per class: accuracy = C[c, c] / row sum (i.e. recall); IoU = C[c, c] / (row + col − C[c, c]).
- Means over the 9 classes *including* unlabeled; a class without ground-truth pixels in the
  subset has no accuracy and no IoU and is left out of both means.
- Subsets: ``all``; ``day`` / ``night`` = images whose name ends in ``D`` / ``N``
  (e.g. ``00101D``). Results are in percent.

Files: labels and predictions are single-channel PNGs (mode L or P) of class indices,
``<name>.png``, predictions at the label's resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
from PIL import Image

from md.data.mfnet import CLASSES
from md.errors import DataError

N_CLASSES = len(CLASSES)
SUBSETS = ("all", "day", "night")

ClassScores = dict[str, dict[str, float | None]]  # class name -> {"accuracy", "iou"}


class Report(TypedDict):
    """Metrics in percent per subset; None where a subset / class has no ground truth."""

    mean_accuracy: dict[str, float | None]  # subset -> mean over classes with GT
    mean_iou: dict[str, float | None]
    per_class: dict[str, ClassScores]  # subset -> class -> {"accuracy", "iou"}


def condition(name: str) -> str | None:
    """``day`` / ``night`` from the MFNet name suffix (``00101D``, ``01606N``), else None."""
    suffix = Path(name).stem[-1:].upper()
    return {"D": "day", "N": "night"}.get(suffix)


def confusion_matrix(label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(9, 9) int64 pixel counts, rows = ground-truth class, columns = predicted class.

    Both arrays hold class indices 0..8 and have the same shape.
    """
    index = N_CLASSES * label.astype(np.int64).ravel() + prediction.astype(np.int64).ravel()
    return np.bincount(index, minlength=N_CLASSES**2).reshape(N_CLASSES, N_CLASSES)


def class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, IoU), each (9,) in [0, 1]; NaN for classes without ground-truth pixels."""
    c = confusion.astype(np.float64)
    tp = np.diag(c)
    rows, cols = c.sum(axis=1), c.sum(axis=0)
    present = rows > 0
    accuracy = np.divide(tp, rows, out=np.full(N_CLASSES, np.nan), where=present)
    iou = np.divide(tp, rows + cols - tp, out=np.full(N_CLASSES, np.nan), where=present)
    return accuracy, iou


def mean_scores(confusion: np.ndarray) -> tuple[float | None, float | None]:
    """(mean accuracy, mean IoU) in percent over classes with ground truth; None if none."""
    accuracy, iou = class_scores(confusion)
    if np.isnan(accuracy).all():
        return None, None
    return 100.0 * float(np.nanmean(accuracy)), 100.0 * float(np.nanmean(iou))


def summarize(confusions: Mapping[str, np.ndarray]) -> Report:
    """Report of per-subset confusion matrices: mean accuracy / IoU and per-class scores.

    ``{"mean_accuracy": {subset: %}, "mean_iou": {subset: %},
    "per_class": {subset: {class: {"accuracy": %, "iou": %}}}}``; None where undefined.
    """
    mean_accuracy: dict[str, float | None] = {}
    mean_iou: dict[str, float | None] = {}
    per_class: dict[str, ClassScores] = {}
    for subset, confusion in confusions.items():
        mean_accuracy[subset], mean_iou[subset] = mean_scores(confusion)
        accuracy, iou = class_scores(confusion)
        per_class[subset] = {
            name: {"accuracy": _percent(a), "iou": _percent(i)}
            for name, a, i in zip(CLASSES, accuracy, iou, strict=True)
        }
    return Report(mean_accuracy=mean_accuracy, mean_iou=mean_iou, per_class=per_class)


def _percent(x: float) -> float | None:
    return None if np.isnan(x) else 100.0 * float(x)


def subset_confusions(
    names: Sequence[str], confusions: Iterable[np.ndarray]
) -> dict[str, np.ndarray]:
    """Sum per-image confusion matrices into ``all`` / ``day`` / ``night``."""
    totals = {s: np.zeros((N_CLASSES, N_CLASSES), np.int64) for s in SUBSETS}
    for name, confusion in zip(names, confusions, strict=True):
        totals["all"] += confusion
        group = condition(name)
        if group is not None:
            totals[group] += confusion
    return totals


def evaluate_arrays(
    names: Sequence[str], labels: Iterable[np.ndarray], predictions: Iterable[np.ndarray]
) -> Report:
    """Metrics of in-memory (H, W) class-index maps, one per named image (see `summarize`)."""
    per_image = (confusion_matrix(lab, pred) for lab, pred in zip(labels, predictions, strict=True))
    return summarize(subset_confusions(names, per_image))


# --------------------------------------------------------------------------- files


def resolve_labels_dir(path: str | Path) -> Path:
    """An MFNet root (with ``labels/`` inside) or the labels folder itself."""
    path = Path(path)
    if (path / "labels").is_dir():
        return path / "labels"
    if path.is_dir():
        return path
    raise DataError(f"{path}: labels folder not found; pass an MFNet root or its labels/ folder")


def read_names(list_file: str | Path | None, labels_dir: Path) -> list[str]:
    """Image names from a list file (one per line, extension optional), else every label."""
    if list_file is None:
        names = sorted(p.stem for p in labels_dir.glob("*.png"))
        if not names:
            raise DataError(f"{labels_dir}: no label PNGs; pass the MFNet labels folder")
        return names
    try:
        lines = Path(list_file).read_text().split()
    except OSError as e:
        raise DataError(f"{list_file}: cannot read image list ({e.strerror})") from None
    if not lines:
        raise DataError(f"{list_file}: image list is empty; one image name per line")
    return [Path(line).stem for line in lines]


def read_class_map(path: Path, role: str) -> np.ndarray:
    """(H, W) class indices from a single-channel PNG (mode L or P); checks values 0..8."""
    if not path.is_file():
        fix = (
            "write one <name>.png per listed image"
            if role == "prediction"
            else "check --labels and the image list"
        )
        raise DataError(f"{path}: missing {role} file; {fix}")
    try:
        with Image.open(path) as im:
            array = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: unreadable {role} image ({e})") from None
    if array.ndim != 2:
        raise DataError(
            f"{path}: {role} has shape {array.shape}; expected a single-channel PNG of class "
            "indices (mode L or P), not colours"
        )
    outside = (array < 0) | (array >= N_CLASSES)
    if outside.any():
        bad = [int(v) for v in np.unique(array[outside])[:5]]
        raise DataError(
            f"{path}: {role} values {bad} outside the MFNet classes 0..8; "
            "write class indices, not colours"
        )
    return array


def image_confusion(name: str, pred_dir: Path, labels_dir: Path) -> np.ndarray:
    """Confusion matrix of one image's prediction file against its label file."""
    label = read_class_map(labels_dir / f"{name}.png", "label")
    pred_path = pred_dir / f"{name}.png"
    prediction = read_class_map(pred_path, "prediction")
    if prediction.shape != label.shape:
        (h, w), (lh, lw) = prediction.shape, label.shape
        raise DataError(
            f"{pred_path}: prediction is {w}x{h} (WxH) but label {labels_dir / name}.png is "
            f"{lw}x{lh}; predict at the label's resolution"
        )
    return confusion_matrix(label, prediction)


def evaluate_predictions(
    pred_dir: str | Path, labels_dir: str | Path, list_file: str | Path | None = None
) -> Report:
    """Mean accuracy / IoU (percent) of prediction PNGs against MFNet labels.

    `pred_dir` holds ``<name>.png`` class-index maps; `labels_dir` is an MFNet root or its
    ``labels/`` folder; `list_file` names the images (e.g. ``test.txt``), default every label.
    Returns ``{"mean_accuracy": {"all", "day", "night"}, "mean_iou": {...},
    "per_class": {subset: {class: {"accuracy", "iou"}}}}``.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    labels = resolve_labels_dir(labels_dir)
    names = read_names(list_file, labels)
    per_image = (image_confusion(name, pred_dir, labels) for name in names)
    return summarize(subset_confusions(names, per_image))
