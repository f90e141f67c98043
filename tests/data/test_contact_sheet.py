"""The contact sheet's key: what the box colours mean (KAIST), which class is which (MFNet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from md.data import open_dataset
from md.data.inspect import BOX_COLOURS, CAPTION, HEADER, MFNET_PALETTE, contact_sheet

KEY = 16  # px: the strip under the rows


def key_strip(sheet: np.ndarray) -> np.ndarray:
    return sheet[-KEY:]


def swatch_pixels(strip: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((strip == np.array(colour, np.uint8)).all(-1).sum())


def test_kaist_sheet_has_a_key_to_its_box_colours(synth_det: Path) -> None:
    ds = open_dataset(synth_det, split="test")
    sheet = np.asarray(contact_sheet(ds, per_group=1, tile_width=240))
    tile_h = round(240 * 80 / 96)  # synth_det is 96x80
    assert sheet.shape[0] == HEADER + 2 * (tile_h + CAPTION) + KEY  # one day, one night row
    for name, colour in BOX_COLOURS.items():
        # a filled 10x10 swatch inside a 1-px outline: 64 pixels of exactly the box colour
        assert swatch_pixels(key_strip(sheet), colour) >= 64, name


def test_mfnet_sheet_keeps_its_class_key(synth_seg: Path) -> None:
    ds = open_dataset(synth_seg, split="test")
    strip = key_strip(np.asarray(contact_sheet(ds, per_group=1)))
    for colour in MFNET_PALETTE[1:]:
        assert swatch_pixels(strip, tuple(int(v) for v in colour)) >= 64
