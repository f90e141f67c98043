"""A half-resolution copy (320x240) of an MFNet-layout folder, for CPU-sized real-data runs.

    python bench/mfnet_half.py ../shared/data/mfnet-mini runs/mfnet-half

Images are 4-band PNGs (RGB + thermal). Each band is resized on its own: Pillow resizes RGBA
premultiplied by alpha, and here alpha is the thermal band, which would darken the visible
bands wherever the scene is cold. Labels are resized with nearest neighbour. The split lists
are copied unchanged.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

SIZE = (320, 240)


def halve(src: Path, dst: Path) -> int:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(exist_ok=True)
    for name in ("train.txt", "test.txt"):
        shutil.copy(src / name, dst / name)
    images = sorted((src / "images").glob("*.png"))
    for path in images:
        with Image.open(path) as im:
            bands = [band.resize(SIZE, Image.Resampling.BILINEAR) for band in im.split()]
            Image.merge(im.mode, bands).save(dst / "images" / path.name)
        with Image.open(src / "labels" / path.name) as label:
            label.resize(SIZE, Image.Resampling.NEAREST).save(dst / "labels" / path.name)
    return len(images)


if __name__ == "__main__":
    print(f"{halve(Path(sys.argv[1]), Path(sys.argv[2]))} pairs written to {sys.argv[2]}")
