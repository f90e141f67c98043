"""bench/mfnet_half.py: the half-resolution copy keeps visible bands independent of thermal."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import REPO


def test_halving_resizes_each_band_on_its_own(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    rng = np.random.default_rng(0)
    rgbt = rng.integers(0, 256, (480, 640, 4), dtype=np.uint8)
    rgbt[:, :320, 3] = 0  # a cold half: premultiplied resizing would zero its visible bands
    Image.fromarray(rgbt, "RGBA").save(src / "images" / "00001D.png")
    labels = rng.integers(0, 9, (480, 640), dtype=np.uint8)
    Image.fromarray(labels).save(src / "labels" / "00001D.png")
    (src / "train.txt").write_text("00001D\n")
    (src / "test.txt").write_text("")
    halve = runpy.run_path(str(REPO / "bench" / "mfnet_half.py"))["halve"]
    assert halve(src, dst) == 1
    out = np.asarray(Image.open(dst / "images" / "00001D.png"))
    assert out.shape == (240, 320, 4)
    # visible bands of the cold half survive: equal to the red band resized alone
    red = np.asarray(Image.fromarray(rgbt[..., 0]).resize((320, 240), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[..., 0], red)
    assert out[:, :150, :3].mean() > 100
    halved_labels = np.asarray(Image.open(dst / "labels" / "00001D.png"))
    assert halved_labels.shape == (240, 320) and set(np.unique(halved_labels)) <= set(range(9))
    assert (dst / "train.txt").read_text() == "00001D\n"
