"""What is in a dataset folder: counts per group, boxes or class shares, and a contact sheet.

`summarize` opens a KAIST- or MFNet-layout folder with `md.data.open_dataset`, loads every
sample once through `md.data.validate` (so decoding and annotation problems are found) and
gathers statistics in the same pass. `contact_sheet` renders a few day and night samples as
rows of visible | thermal (false colour) | labels, for a quick look before training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from md.data import PairedDataset, open_dataset, validate
from md.data.mfnet import CLASSES as MFNET_CLASSES
from md.errors import DataError

# The palette of the MFNet / RTFNet code, so sheets look like the papers' figures.
MFNET_PALETTE = np.array(
    [
        [0, 0, 0],
        [64, 0, 128],
        [64, 64, 0],
        [0, 128, 192],
        [0, 0, 192],
        [128, 128, 0],
        [64, 64, 128],
        [192, 128, 128],
        [192, 64, 0],
    ],
    dtype=np.uint8,
)
# KAIST 'reasonable' setting, defined at 640x512: boxes >= 55 px tall, occlusion 0 or 1, not
# ignored, not within 5 px of the border. Other image sizes scale both thresholds.
REASONABLE_HEIGHT, BORDER, KAIST_SIZE = 55.0, 5.0, (640, 512)
GROUPS = ("day", "night")
# Box colours on the contact sheet, keyed by what the KAIST protocol makes of the box (the
# keys are the words of the sheet's key).
BOX_COLOURS = {
    "reasonable": (40, 255, 40),  # counts in the 'reasonable' setting
    "small / occluded / border": (255, 220, 0),  # not counted, not ignored
    "ignored": (255, 40, 40),  # ignore flag or a class other than person
}


@dataclass
class _Tally:
    """Running statistics over the items `validate` loads."""

    boxes: Counter[str] = field(default_factory=Counter)
    pixels: NDArray[np.int64] = field(
        default_factory=lambda: np.zeros((len(GROUPS) + 1, 9), np.int64)
    )
    images_with: NDArray[np.int64] = field(default_factory=lambda: np.zeros(9, np.int64))
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)

    def add(self, item: dict[str, Any]) -> None:
        h, w = item["visible"].shape[-2:]
        self.sizes[(int(w), int(h))] += 1
        if "boxes" in item:
            self._add_boxes(item, (int(w), int(h)))
        if "labels" in item:
            counts = np.bincount(item["labels"].reshape(-1).numpy(), minlength=9)[:9]
            row = GROUPS.index(item["group"]) if item["group"] in GROUPS else len(GROUPS)
            self.pixels[row] += counts
            self.images_with += counts > 0

    def _add_boxes(self, item: dict[str, Any], size: tuple[int, int]) -> None:
        boxes = item["boxes"]
        group = item["group"]
        ok = reasonable(boxes, item["box_ignore"], item["box_occlusion"], size)
        self.boxes["total"] += len(boxes)
        self.boxes["reasonable"] += int(ok.sum())
        self.boxes["ignored"] += int(item["box_ignore"].sum())
        self.boxes[f"group:{group}"] += len(boxes)
        self.boxes[f"reasonable:{group}"] += int(ok.sum())


def reasonable(
    boxes: torch.Tensor, ignore: torch.Tensor, occlusion: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """(N,) bool: boxes that count in the KAIST 'reasonable' setting at image `size` (W, H)."""
    sx, sy = size[0] / KAIST_SIZE[0], size[1] / KAIST_SIZE[1]
    x1, y1, x2, y2 = boxes.unbind(-1) if len(boxes) else (torch.zeros(0),) * 4
    inside = (x1 >= BORDER * sx) & (y1 >= BORDER * sy)
    inside &= (x2 <= size[0] - BORDER * sx) & (y2 <= size[1] - BORDER * sy)
    tall = (y2 - y1) >= REASONABLE_HEIGHT * sy
    return ~ignore & (occlusion <= 1) & tall & inside


def summarize(
    root: str | Path, split: str | None = None, list_file: str | Path | None = None
) -> dict[str, Any]:
    """Counts and statistics of a dataset folder (see `md data inspect --help`)."""
    ds = open_dataset(root, split=split, list_file=list_file)
    tally = _Tally()
    problems = validate(ds, on_item=tally.add)
    groups = Counter(s.group for s in ds.samples)
    out: dict[str, Any] = {
        "root": str(ds.root),
        "layout": ds.layout,
        "task": ds.task,
        "list": str(ds.list_file) if ds.list_file else None,
        "samples": len(ds),
        "day": groups.get("day", 0),
        "night": groups.get("night", 0),
        "unknown_group": groups.get("unknown", 0),
        "sizes": {f"{w}x{h}": n for (w, h), n in sorted(tally.sizes.items())},
        "problems": [str(p) for p in problems],
    }
    out.update(_box_stats(tally) if ds.layout == "kaist" else _class_stats(tally))
    return out


def _box_stats(tally: _Tally) -> dict[str, Any]:
    b = tally.boxes
    return {
        "boxes": b["total"],
        "boxes_reasonable": b["reasonable"],
        "boxes_ignored": b["ignored"],
        "boxes_by_group": {g: b[f"group:{g}"] for g in GROUPS},
        "boxes_reasonable_by_group": {g: b[f"reasonable:{g}"] for g in GROUPS},
    }


def _class_stats(tally: _Tally) -> dict[str, Any]:
    def shares(counts: NDArray[np.int64]) -> dict[str, float]:
        total = max(int(counts.sum()), 1)
        return {
            name: round(int(c) / total, 6) for name, c in zip(MFNET_CLASSES, counts, strict=True)
        }

    return {
        "class_shares": shares(tally.pixels.sum(0)),
        "class_shares_by_group": {g: shares(tally.pixels[i]) for i, g in enumerate(GROUPS)},
        "class_images": {n: int(c) for n, c in zip(MFNET_CLASSES, tally.images_with, strict=True)},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of `summarize`'s result."""
    lines = [
        f"{summary['root']}: {summary['layout']} layout ({summary['task']}), "
        f"{summary['samples']} samples: {summary['day']} day, {summary['night']} night"
        + (f", {summary['unknown_group']} unknown" if summary["unknown_group"] else ""),
        f"  list: {summary['list'] or '(all samples)'}; image sizes: "
        + ", ".join(f"{k} x{n}" for k, n in summary["sizes"].items()),
    ]
    if summary["layout"] == "kaist":
        by = summary["boxes_by_group"]
        lines.append(
            f"  boxes: {summary['boxes']} (day {by['day']}, night {by['night']}); "
            f"reasonable {summary['boxes_reasonable']}; ignored {summary['boxes_ignored']}"
        )
    else:
        ranked = sorted(summary["class_shares"].items(), key=lambda kv: -kv[1])
        lines.append("  class pixel shares: " + ", ".join(f"{k} {v:.2%}" for k, v in ranked))
    if summary["problems"]:
        lines.append(f"  {len(summary['problems'])} problem(s):")
        lines += [f"    {p}" for p in summary["problems"]]
    else:
        lines.append("  no problems found")
    return "\n".join(lines)


# --- contact sheet ---------------------------------------------------------------------------


def pick_rows(ds: PairedDataset, per_group: int) -> list[int]:
    """Indices of up to `per_group` day then night samples, evenly spread over each group."""
    rows: list[int] = []
    for group in (*GROUPS, "unknown"):
        members = [i for i, s in enumerate(ds.samples) if s.group == group]
        if members:
            picks = np.linspace(0, len(members) - 1, min(per_group, len(members)))
            rows += [members[round(float(p))] for p in picks]
    return rows


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB image."""
    array = (tensor.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def false_colour(thermal: torch.Tensor) -> Image.Image:
    """(1, H, W) thermal in [0, 1] -> 'ironbow'-like colours (black-blue-magenta-orange-white),
    the usual palette of thermal cameras; warm is bright.

    For display only, the 1-99.5 percentile range is stretched to the full palette (KAIST
    frames use about half of the 8-bit range).
    """
    t = thermal[0].numpy().astype(np.float64)
    lo, hi = np.percentile(t, [1.0, 99.5])
    t = np.clip((t - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    colours = np.array(
        [[0, 0, 0], [40, 0, 140], [190, 30, 120], [250, 150, 0], [255, 255, 230]], float
    )
    rgb = np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8), mode="RGB")


def label_image(item: dict[str, Any]) -> Image.Image:
    """Boxes drawn on the visible image (KAIST) or the colour-coded class map (MFNet).

    Box colours: green = counts in the reasonable setting, yellow = small / occluded /
    near the border, red = ignored (ignore flag or a class other than person).
    """
    if "labels" in item:
        return Image.fromarray(MFNET_PALETTE[item["labels"].numpy().clip(0, 8)], mode="RGB")
    image = to_image(item["visible"])
    draw = ImageDraw.Draw(image)
    size = image.size
    ok = reasonable(item["boxes"], item["box_ignore"], item["box_occlusion"], size)
    for box, ign, good in zip(
        item["boxes"].tolist(), item["box_ignore"].tolist(), ok.tolist(), strict=True
    ):
        kind = "ignored" if ign else "reasonable" if good else "small / occluded / border"
        colour = BOX_COLOURS[kind]
        draw.rectangle(
            [box[0], box[1], box[2] - 1, box[3] - 1], outline=colour, width=max(1, size[0] // 320)
        )
    return image


def contact_sheet(ds: PairedDataset, per_group: int = 3, tile_width: int = 240) -> Image.Image:
    """Rows of visible | thermal | labels for a few day and night samples, captioned.

    Samples that fail to load are left out (`validate` reports them).
    """
    items = []
    for index in pick_rows(ds, per_group):
        try:
            items.append(ds[index])
        except DataError:
            continue
    if not items:
        raise DataError(f"{ds.root}: no sample loads, nothing to draw; fix the problems listed")
    h0, w0 = items[0]["visible"].shape[-2:]
    tile = (tile_width, max(1, round(tile_width * int(h0) / int(w0))))
    legend = 16  # the key to the label colours: MFNet classes, or what the box colours mean
    size = (3 * tile[0], HEADER + len(items) * (tile[1] + CAPTION) + legend)
    sheet = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    titles = ("visible", "thermal (false colour)", "boxes" if ds.layout == "kaist" else "labels")
    for c, title in enumerate(titles):
        draw.text((c * tile[0] + 4, 2), title, fill=(230, 230, 230), font=font)
    for r, item in enumerate(items):
        _draw_row(sheet, draw, font, item, HEADER + r * (tile[1] + CAPTION), tile)
    _draw_legend(draw, font, sheet.size[1] - legend + 2, _key(ds.layout))
    return sheet


def _key(layout: str) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each label colour on the sheet."""
    if layout == "mfnet":
        return [
            (n, (int(c[0]), int(c[1]), int(c[2])))
            for n, c in zip(MFNET_CLASSES[1:], MFNET_PALETTE[1:], strict=True)
        ]
    return [(f"box: {kind}", colour) for kind, colour in BOX_COLOURS.items()]


HEADER, CAPTION = 16, 14  # px of the column titles and of each row's caption


def _draw_row(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: Any,
    item: dict[str, Any],
    y: int,
    tile: tuple[int, int],
) -> None:
    caption = f"{item['id']}  [{item['group']}]{_caption(item)}"
    draw.text((4, y), caption, fill=(200, 200, 200), font=font)
    panels = (to_image(item["visible"]), false_colour(item["thermal"]), label_image(item))
    for c, image in enumerate(panels):
        # labels are resized with NEAREST so classes never blend into non-existent ones
        resample = Image.Resampling.BILINEAR if c < 2 else Image.Resampling.NEAREST
        sheet.paste(image.resize(tile, resample), (c * tile[0], y + CAPTION))


def _caption(item: dict[str, Any]) -> str:
    if "boxes" in item:
        return f"  {len(item['boxes'])} boxes"
    present = np.unique(item["labels"].numpy())
    return "  " + ", ".join(MFNET_CLASSES[c] for c in present if 0 < c < 9)


def _draw_legend(
    draw: ImageDraw.ImageDraw, font: Any, y: int, key: list[tuple[str, tuple[int, int, int]]]
) -> None:
    """One row of colour swatches (10x10 px) and names, starting at height `y`."""
    x = 4
    for name, colour in key:
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=colour, outline=(200, 200, 200))
        draw.text((x + 12, y), name, fill=(220, 220, 220), font=font)
        x += 14 + int(draw.textlength(name, font=font)) + 8


def write_sheet(
    root: str | Path,
    out: str | Path,
    split: str | None = None,
    list_file: str | Path | None = None,
    per_group: int = 3,
) -> Path:
    """Render `contact_sheet` of a dataset folder to the PNG `out`."""
    ds = open_dataset(root, split=split, list_file=list_file)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(ds, per_group=per_group).save(path, format="PNG")
    return path


__all__: Sequence[str] = (
    "contact_sheet",
    "format_summary",
    "reasonable",
    "summarize",
    "write_sheet",
)
