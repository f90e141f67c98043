"""Image-level transforms: the student's low-resolution thermal input, and joint flips and
crops that keep images, labels, boxes and dense target maps (teacher features / masks at a
backbone stride) aligned.

Tensors may be single samples (C, H, W) or batches (B, C, H, W); only the last two dims are
spatial. Boxes are xyxy pixel coordinates where pixel column i covers [i, i + 1). Box fields
are ``boxes`` and every ``box_*`` key (``box_ignore``, ``box_occlusion``, ``box_classes``):
a tensor / list per image, or for a batch a list of those.

Bad knobs (a thermal factor outside 1/4/16/64, a crop not aligned to the stride) raise
`md.errors.ConfigError`, since they come from a user's config; tensors of inconsistent
shapes raise `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from md.data.collate import is_box_key
from md.errors import ConfigError

THERMAL_FACTORS = (1, 4, 16, 64)  # pixel-count factors; the side shrinks by 1, 2, 4, 8
IMAGE_KEYS = ("visible", "thermal", "labels")  # full-resolution maps, always transformed

Sample = dict[str, Any]


# --- thermal resolution and the student's input -------------------------------------------


def thermal_side_divisor(factor: int) -> int:
    """Side divisor (1, 2, 4, 8) of a pixel factor (1, 4, 16, 64); `ConfigError` otherwise."""
    if factor not in THERMAL_FACTORS:
        raise ConfigError(
            f"thermal_factor must be one of {', '.join(map(str, THERMAL_FACTORS))} "
            f"(pixel factor: side ÷ 1, 2, 4, 8), got {factor!r}"
        )
    return math.isqrt(factor)


def reduce_thermal(thermal: torch.Tensor, factor: int, *, antialias: bool = False) -> torch.Tensor:
    """Simulate a low-resolution thermal camera: (B?, 1, H, W) -> same shape.

    Bilinear down-sampling to (H // d, W // d) with d = sqrt(factor), then bilinear
    up-sampling back to (H, W), both with ``align_corners=False``. The paper says plain
    bilinear interpolation, so no anti-aliasing by default (for d = 2 that is exactly a 2x2
    mean; for d = 4, 8 it samples between pixel pairs and aliases, as a cheap sensor would);
    ``antialias=True`` filters the down-sampling instead. Factor 1 returns `thermal` itself.
    """
    side = thermal_side_divisor(factor)
    if side == 1:
        return thermal
    if thermal.dim() not in (3, 4) or not thermal.is_floating_point():
        raise ValueError(
            f"reduce_thermal: expected float (B?, 1, H, W), got {thermal.dtype} "
            f"{tuple(thermal.shape)}"
        )
    x = thermal if thermal.dim() == 4 else thermal.unsqueeze(0)
    height, width = x.shape[-2:]
    low_size = (max(1, height // side), max(1, width // side))
    low = F.interpolate(x, size=low_size, mode="bilinear", align_corners=False, antialias=antialias)
    up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return up if thermal.dim() == 4 else up[0]


def student_input(visible: torch.Tensor, thermal: torch.Tensor | None) -> torch.Tensor:
    """Image-level fusion for the one-stream student.

    visible (B?, 3, H, W) and thermal (B?, 1, H, W) at student resolution (already through
    `reduce_thermal`) -> (B?, 6, H, W) = cat(visible, thermal repeated 3x); with
    ``thermal=None`` (the visible-only baseline) -> visible itself, (B?, 3, H, W).
    """
    if visible.shape[-3] != 3:
        raise ValueError(f"student_input: visible must have 3 channels, got {tuple(visible.shape)}")
    if thermal is None:
        return visible
    if thermal.shape[-3] != 1 or thermal.shape[:-3] + thermal.shape[-2:] != (
        visible.shape[:-3] + visible.shape[-2:]
    ):
        raise ValueError(
            f"student_input: thermal {tuple(thermal.shape)} does not match visible "
            f"{tuple(visible.shape)} (expected 1 channel, same batch and size)"
        )
    return torch.cat([visible, thermal.expand_as(visible)], dim=-3)


# --- joint flips -----------------------------------------------------------------------------


def hflip_sample(sample: Sample, dense_keys: Iterable[str] = ()) -> Sample:
    """Mirror left-right: images, ``labels``, boxes (x1' = W - x2, x2' = W - x1) and the maps
    named in `dense_keys` (tensors (..., H/s, W/s), or dicts of them, at any stride s with
    W divisible by W/s). Returns a new dict; other keys are shared, not copied."""
    width = image_size(sample)[1]
    out = dict(sample)
    for key in IMAGE_KEYS:
        if key in sample:
            out[key] = sample[key].flip(-1)
    for key in dense_keys:
        out[key] = _each_map(sample[key], partial(_flip_map, width=width, key=key))
    if "boxes" in sample:
        out["boxes"] = _per_image(sample["boxes"], lambda b: flip_boxes(b, width))
    return out


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 4) xyxy boxes mirrored in an image `width` pixels wide."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=-1)


def _flip_map(t: torch.Tensor, width: int, key: str) -> torch.Tensor:
    if width % t.shape[-1]:
        raise ValueError(
            f"hflip_sample: {key!r} width {t.shape[-1]} is not the image width "
            f"{width} divided by an integer stride"
        )
    return t.flip(-1)


# --- stride-aligned crops --------------------------------------------------------------------


def crop_sample(
    sample: Sample,
    top: int,
    left: int,
    h: int,
    w: int,
    align: int = 32,
    dense_keys: Iterable[str] = (),
    min_kept: float = 0.5,
) -> Sample:
    """Crop rows [top, top+h) and columns [left, left+w) of everything in `sample`.

    All four numbers must be multiples of `align` (the coarsest backbone stride, 32 by
    default), so a map at any stride s dividing `align` is cut exactly at
    [top/s : (top+h)/s, left/s : (left+w)/s]. Boxes are shifted and clipped to the window;
    boxes left with no area are dropped (with their ``box_*`` entries), and boxes that keep
    less than `min_kept` of their area are marked ``box_ignore`` (a sliver of a pedestrian
    is neither a fair positive nor a fair negative).
    """
    height, width = image_size(sample)
    check_crop(top, left, h, w, align, height, width)
    out = dict(sample)
    for key in IMAGE_KEYS:
        if key in sample:
            out[key] = sample[key][..., top : top + h, left : left + w]
    for key in dense_keys:
        crop = partial(
            _crop_map, window=(top, left, h, w), image_hw=(height, width), align=align, key=key
        )
        out[key] = _each_map(sample[key], crop)
    if "boxes" in sample:
        out.update(_crop_box_fields(sample, (top, left, h, w), min_kept))
    return out


def check_crop(top: int, left: int, h: int, w: int, align: int, height: int, width: int) -> None:
    """`ConfigError` unless the crop is `align`-aligned, non-empty and inside the image."""
    values = {"top": top, "left": left, "h": h, "w": w}
    bad = {k: v for k, v in values.items() if v % align}
    if bad:
        raise ConfigError(
            f"crop {bad} not a multiple of align={align}; use crop sizes and offsets that are "
            f"multiples of the backbone stride {align}"
        )
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ConfigError(f"crop {values} does not fit inside the {width}x{height} image")


def random_aligned_crop_params(
    height: int,
    width: int,
    h: int,
    w: int,
    align: int = 32,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a uniformly drawn `align`-aligned h x w window in the image."""
    check_crop(0, 0, h, w, align, height, width)
    n_top = (height - h) // align + 1  # window origins on the align grid that still fit
    n_left = (width - w) // align + 1
    top = int(torch.randint(n_top, (1,), generator=generator)) * align
    left = int(torch.randint(n_left, (1,), generator=generator)) * align
    return top, left, h, w


def crop_boxes(
    boxes: torch.Tensor, top: int, left: int, h: int, w: int, min_kept: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift (N, 4) xyxy boxes into the window and clip them to it.

    Returns (clipped (N, 4), keep (N,) bool: some area left, low (N,) bool: less than
    `min_kept` of the area left).
    """
    offset = boxes.new_tensor([left, top, left, top])
    shifted = boxes - offset
    limit = boxes.new_tensor([w, h, w, h])
    clipped = torch.minimum(shifted.clamp(min=0), limit)
    size = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0)
    area = size.prod(-1)
    full = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    keep = area > 0
    return clipped, keep, area < min_kept * full


def _crop_box_fields(sample: Sample, window: tuple[int, int, int, int], min_kept: float) -> Sample:
    """Cropped ``boxes`` and ``box_*`` entries, for one image or a batch (lists)."""
    keys = [k for k in sample if is_box_key(k)]
    if isinstance(sample["boxes"], torch.Tensor):
        return _crop_one_image_boxes({k: sample[k] for k in keys}, window, min_kept)
    per_image = [
        _crop_one_image_boxes({k: sample[k][i] for k in keys}, window, min_kept)
        for i in range(len(sample["boxes"]))
    ]
    out_keys = per_image[0].keys() if per_image else keys
    return {k: [fields[k] for fields in per_image] for k in out_keys}


def _crop_one_image_boxes(
    fields: Sample, window: tuple[int, int, int, int], min_kept: float
) -> Sample:
    clipped, keep, low = crop_boxes(fields["boxes"], *window, min_kept=min_kept)
    index = keep.nonzero().flatten().tolist()
    out: Sample = {"boxes": clipped[keep]}
    for key, value in fields.items():
        if key != "boxes":
            out[key] = value[keep] if isinstance(value, torch.Tensor) else [value[i] for i in index]
    ignore = out.get("box_ignore", torch.zeros(len(index), dtype=torch.bool))
    out["box_ignore"] = ignore | low[keep]
    return out


def _crop_map(
    t: torch.Tensor,
    window: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    align: int,
    key: str,
) -> torch.Tensor:
    """Cut a (..., H/s, W/s) map at stride s = H / (H/s), which must divide `align`."""
    top, left, h, w = window
    stride = max(1, image_hw[0] // t.shape[-2])
    if (t.shape[-2] * stride, t.shape[-1] * stride) != image_hw or align % stride:
        raise ValueError(
            f"crop_sample: {key!r} of size {tuple(t.shape[-2:])} is not the image "
            f"size {image_hw} at an integer stride dividing align={align}"
        )
    return t[..., top // stride : (top + h) // stride, left // stride : (left + w) // stride]


# --- helpers ---------------------------------------------------------------------------------


def image_size(sample: Sample) -> tuple[int, int]:
    """(H, W) of the sample's full-resolution images (``visible``, ``thermal`` or ``labels``)."""
    for key in IMAGE_KEYS:
        if key in sample:
            return int(sample[key].shape[-2]), int(sample[key].shape[-1])
    raise ValueError(f"sample has none of {IMAGE_KEYS}; cannot tell the image size")


def _per_image(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to one image's tensor, or to each one of a batch's list."""
    return fn(value) if isinstance(value, torch.Tensor) else [fn(v) for v in value]


def _each_map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to a dense map, or to each map of a dict of maps (e.g. per level)."""
    if isinstance(value, Mapping):
        return {k: fn(v) for k, v in value.items()}
    return fn(value)
