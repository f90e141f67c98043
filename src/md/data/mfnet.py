"""MFNet multispectral segmentation layout.

::

    ROOT/images/NAME.png     4 channels: R, G, B, thermal (8-bit)
    ROOT/labels/NAME.png     1 channel, classes 0..8 (0 unlabeled, 1 car, ..., 8 bump)
    ROOT/{train,val,test}.txt  optional lists, one NAME per line (a ``.png`` suffix is tolerated)

Decisions:

- The group comes from the name's last letter: ``D`` day, ``N`` night (MFNet's convention);
  any other name gets ``unknown`` rather than an error.
- Every image needs its label (MFNet ships one per image); a missing one is an error.
- A label must be one channel (mode L or P, values taken as stored), the image's size, and
  hold only classes 0..8.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from md.data.layout import (
    DecodedImages,
    Item,
    PairedDataset,
    Sample,
    image_to_tensor,
    read_image,
    read_list,
)
from md.errors import DataError

# MFNet label values 0..8, in order (Ha et al. 2017; RTFNet / MD Table 6 use the same).
CLASSES = (
    "unlabeled",
    "car",
    "person",
    "bike",
    "curve",
    "car_stop",
    "guardrail",
    "color_cone",
    "bump",
)
NUM_CLASSES = len(CLASSES)  # 0 unlabeled .. 8 bump
MFNET_NAME = re.compile(r"[\w.-]+")


def mfnet_group(name: str) -> str:
    """``day`` / ``night`` from the D / N suffix of an MFNet name; ``unknown`` otherwise."""
    return {"D": "day", "N": "night"}.get(name[-1:].upper(), "unknown")


def find_names(root: Path) -> list[str]:
    """Sorted names of every ``images/NAME.png``."""
    return sorted(p.stem for p in (root / "images").glob("*.png"))


def resolve_sample(root: Path, name: str, where: str) -> Sample:
    """Locate one image and its label; `where` says which list line asked for it."""
    image = root / "images" / f"{name}.png"
    label = root / "labels" / f"{name}.png"
    if not image.is_file():
        raise DataError(f"{where}: {name!r} not found (no {image}); fix the entry or add the image")
    if not label.is_file():
        raise DataError(
            f"{label}: missing label for {name}; add it (one channel, classes 0..8) "
            "or drop the sample from the list"
        )
    return Sample(name, mfnet_group(name), image, image, label)


def decode_image4(path: Path) -> np.ndarray:
    """A 4-channel MFNet PNG's pixels, (H, W, 4) uint8 (RGB + thermal)."""
    img = read_image(path)
    array = np.asarray(img)
    if array.ndim != 3 or array.shape[2] != 4 or array.dtype != np.uint8:
        raise DataError(
            f"{path}: expected an 8-bit 4-channel PNG (RGB + thermal), got mode {img.mode}; "
            "re-export it with the thermal image as the 4th channel"
        )
    return array


def load_image4(
    path: Path, cache: DecodedImages | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 4-channel MFNet PNG -> visible float32 (3, H, W), thermal (1, H, W), in [0, 1];
    with `cache` the decoded pixels come from (or go to) a `DecodedImages` cache."""
    array = cache.pixels(path, "rgbt", decode_image4) if cache is not None else decode_image4(path)
    image = image_to_tensor(array)  # (4, H, W)
    return image[:3], image[3:]


def load_label(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A label PNG -> int64 (H, W); checks one channel, `size` (H, W) and classes 0..8."""
    img = read_image(path)
    array = np.asarray(img)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{path}: label must be one integer channel, got mode {img.mode}; "
            "save class indices 0..8 as a gray PNG"
        )
    if array.shape != size:
        raise DataError(
            f"{path}: label is {array.shape[1]}x{array.shape[0]} but its image is "
            f"{size[1]}x{size[0]}; re-export the label at the image size"
        )
    top = int(array.max()) if array.size else 0
    if top >= NUM_CLASSES:
        raise DataError(
            f"{path}: label value {top} outside classes 0..{NUM_CLASSES - 1}; "
            "fix the label (MFNet has 9 classes)"
        )
    return torch.from_numpy(array.astype(np.int64))


class MfnetDataset(PairedDataset):
    """MFNet-layout pairs with dense labels; items as in docs/internals.md."""

    layout = "mfnet"
    task = "segmentation"
    list_dirs = (".",)

    @classmethod
    def open(cls, root: Path, split: str | None, list_file: Path | None) -> MfnetDataset:
        """Resolve every sample's files now (existence only; contents load lazily)."""
        if list_file is None:
            samples = [resolve_sample(root, n, str(root)) for n in find_names(root)]
        else:
            samples = [
                resolve_sample(root, _normalise_name(list_file, n, e), f"{list_file} line {n}")
                for n, e in read_list(list_file)
            ]
        return cls(root, samples, split, list_file)

    def load(self, sample: Sample) -> Item:
        visible, thermal = load_image4(sample.visible_path, self.decoded)
        labels = load_label(sample.target_path, (visible.shape[1], visible.shape[2]))
        return {
            "id": sample.id,
            "group": sample.group,
            "visible": visible,
            "thermal": thermal,
            "labels": labels,
        }


def _normalise_name(list_file: Path, number: int, entry: str) -> str:
    """A bare NAME from a list entry (``NAME.png`` tolerated); no folders allowed."""
    name = entry[: -len(".png")] if entry.endswith(".png") else entry
    if not MFNET_NAME.fullmatch(name):
        raise DataError(
            f"{list_file} line {number}: {entry!r} is not an MFNet image name; "
            "write names like 00101D, one per line"
        )
    return name


__all__ = ["NUM_CLASSES", "MfnetDataset", "find_names", "mfnet_group"]
