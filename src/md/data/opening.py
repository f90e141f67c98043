"""Which layout a folder is in, and opening it as the matching dataset.

Above both readers (`md.data.kaist`, `md.data.mfnet`), which build on `md.data.layout`:
the modules import downwards only.
"""

from __future__ import annotations

import re
from pathlib import Path

from md.data.kaist import KaistDataset
from md.data.layout import PairedDataset, resolve_list
from md.data.mfnet import MfnetDataset
from md.errors import ConfigError, DataError

KAIST_SET_DIR = re.compile(r"set\d{2}")

LAYOUTS_HINT = (
    "expected KAIST (images/setXX/VYYY/{visible,lwir}/IZZZZZ.png + "
    "annotations/setXX/VYYY/IZZZZZ.txt) or MFNet (images/NAME.png with 4 channels + "
    "labels/NAME.png)"
)


def detect_layout(root: Path) -> str:
    """``"kaist"`` or ``"mfnet"`` from the folder structure; `DataError` if neither."""
    images = root / "images"
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder; pass the folder that holds images/")
    if not images.is_dir():
        raise DataError(f"{root}: no images/ folder, so neither layout; {LAYOUTS_HINT}")
    has_sets = any(p.is_dir() and KAIST_SET_DIR.fullmatch(p.name) for p in images.iterdir())
    if has_sets:
        if not (root / "annotations").is_dir():
            raise DataError(
                f"{root}: images/setXX found but no annotations/ folder; add "
                "annotations/setXX/VYYY/IZZZZZ.txt (bbGt v3), one per image"
            )
        return "kaist"
    if any(images.glob("*.png")):
        if not (root / "labels").is_dir():
            raise DataError(
                f"{root}: images/*.png found but no labels/ folder; add labels/NAME.png "
                "(one channel, classes 0..8), one per image"
            )
        return "mfnet"
    raise DataError(f"{root}: folder is in neither layout; {LAYOUTS_HINT}")


def open_dataset(
    root: str | Path, split: str | None = None, list_file: str | Path | None = None
) -> PairedDataset:
    """Open a KAIST- or MFNet-layout folder as a map-style dataset.

    `split="train"` reads ``ROOT/train.txt`` (KAIST also ``ROOT/imageSets/train.txt``);
    `list_file` is an explicit list path; with neither, every sample found, sorted by id.
    """
    root = Path(root)
    if split is not None and list_file is not None:
        raise ConfigError(f"{root}: pass either split={split!r} or list_file, not both")
    layout = detect_layout(root)
    cls: type[KaistDataset] | type[MfnetDataset] = (
        KaistDataset if layout == "kaist" else MfnetDataset
    )
    path = resolve_list(root, split, list_file, cls.list_dirs)
    return cls.open(root, split=split, list_file=path)


__all__ = ["detect_layout", "open_dataset"]
