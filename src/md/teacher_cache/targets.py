"""What `md cache-teacher` stores per sample, computed for one collated batch.

Target names follow `md.stores.StoreSchema.target_shapes` (B = batch, L = a fused level):

- ``features/L`` (B, C_L, H_L, W_L) float32: the teacher's fused features (MD eq. 2);
- ``attention/L`` (B, 1, H_L, W_L) float32 in [0, 1]: the teacher mask (MD eq. 3);
- with flip views, ``features_flip/L`` and ``attention_flip/L``: the teacher's outputs on the
  horizontally mirrored images, in the mirrored frame (aligned with ``hflip_sample(item)``).
  They are *not* the stored maps flipped: padding, strides and the learned GAFF convs make
  the teacher only approximately flip-equivariant, so a student that flips its inputs needs
  these to get the targets the teacher really gives;
- with bundled inputs (everything a gateway needs besides the store):
  ``inputs/visible`` (B, 3, H, W) uint8 = round(255 * visible);
  ``inputs/thermal`` (B, 1, h, w) uint8 with h = H // d, w = W // d, d = sqrt(thermal_factor):
  the bilinear down-sampling half of `md.data.transforms.reduce_thermal` (the student does
  the up-sampling half, `student_thermal`);
  ``labels`` (B, H, W) uint8 (segmentation), or ``boxes`` (B, max_boxes, 6) float32 rows
  `BOX_FIELDS` zero-padded after ``num_boxes`` (B,) int32 real rows (detection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md.data.transforms import thermal_side_divisor
from md.errors import DataError
from md.stores.schema import (
    BOXES,
    FLIP,
    INPUT_THERMAL,
    INPUT_VISIBLE,
    LABELS,
    NUM_BOXES,
    attention_name,
    features_name,
)

# Columns of the bundled ``boxes`` rows: xyxy pixels, ignore flag (0/1), bbGt occlusion level.
BOX_FIELDS = ("x1", "y1", "x2", "y2", "ignore", "occlusion")


@contextlib.contextmanager
def _autocast(device: torch.device, amp: str) -> Iterator[None]:
    """bf16 autocast when `amp` is "bf16", else full precision."""
    if amp == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _numpy(t: Tensor) -> np.ndarray:
    """(device, any float dtype) tensor -> float32 numpy on the CPU (syncs the device)."""
    return t.detach().float().cpu().numpy()


def teacher_targets(
    teacher: nn.Module,
    visible: Tensor,
    thermal: Tensor,
    levels: Sequence[str],
    *,
    amp: str = "none",
    suffix: str = "",
) -> dict[str, np.ndarray]:
    """visible (B, 3, H, W), thermal (B, 1, H, W) on the teacher's device ->
    {``features{suffix}/L``: (B, C_L, H_L, W_L), ``attention{suffix}/L``: (B, 1, H_L, W_L)}."""
    with torch.inference_mode(), _autocast(visible.device, amp):
        out = teacher.forward_features(visible, thermal)  # type: ignore[operator]
    targets: dict[str, np.ndarray] = {}
    for lv in levels:
        targets[features_name(lv, flip=suffix == FLIP)] = _numpy(out["features"][lv])
        targets[attention_name(lv, flip=suffix == FLIP)] = _numpy(out["masks"][lv])
    return targets


def low_thermal(thermal: Tensor, factor: int) -> Tensor:
    """(B, 1, H, W) -> (B, 1, H // d, W // d), d = sqrt(factor): exactly the down-sampling step
    of `reduce_thermal` (bilinear, ``align_corners=False``, no anti-aliasing)."""
    side = thermal_side_divisor(factor)
    if side == 1:
        return thermal
    height, width = thermal.shape[-2:]
    size = (max(1, height // side), max(1, width // side))
    return F.interpolate(thermal, size=size, mode="bilinear", align_corners=False)


def student_thermal(low: Tensor | np.ndarray, size: tuple[int, int]) -> Tensor:
    """Bundled ``inputs/thermal`` (B, 1, h, w) uint8 -> the student's thermal input
    (B, 1, H, W) float32 in [0, 1]: the up-sampling step of `reduce_thermal`. Equals
    ``reduce_thermal(thermal, factor)`` up to the uint8 rounding of the low image (<= 1/510)."""
    x = torch.as_tensor(np.asarray(low)).float() / 255.0
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _uint8(x: Tensor) -> np.ndarray:
    """Float image in [0, 1] -> round(255 x) uint8 (exact for images read from 8-bit files)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).cpu().numpy()


def bundled_inputs(
    batch: Mapping[str, Any], thermal_factor: int, max_boxes: int
) -> dict[str, np.ndarray]:
    """The student-resolution inputs and labels of a collated batch (see module docstring)."""
    out = {
        INPUT_VISIBLE: _uint8(batch["visible"]),
        INPUT_THERMAL: _uint8(low_thermal(batch["thermal"], thermal_factor)),
    }
    if "labels" in batch:
        out[LABELS] = batch["labels"].numpy().astype(np.uint8)  # classes 0..8
    else:
        out.update(pack_boxes(batch, max_boxes))
    return out


def pack_boxes(batch: Mapping[str, Any], max_boxes: int) -> dict[str, np.ndarray]:
    """Per-image boxes / box_ignore / box_occlusion lists -> ``boxes`` (B, max_boxes, 6)
    float32 rows `BOX_FIELDS` (zero rows after the real ones) and ``num_boxes`` (B,) int32."""
    n = len(batch["boxes"])
    rows = np.zeros((n, max_boxes, len(BOX_FIELDS)), dtype=np.float32)
    counts = np.zeros(n, dtype=np.int32)
    for i, boxes in enumerate(batch["boxes"]):
        k = len(boxes)
        if k > max_boxes:
            raise DataError(
                f"sample {batch['id'][i]}: {k} boxes, more than the {max_boxes} found when the "
                "store was laid out; the annotations changed during the run: rerun with --overwrite"
            )
        rows[i, :k, :4] = boxes.numpy()
        rows[i, :k, 4] = batch["box_ignore"][i].numpy()
        rows[i, :k, 5] = batch["box_occlusion"][i].numpy()
        counts[i] = k
    return {BOXES: rows, NUM_BOXES: counts}
