"""Box operations for the detection head, in pure torch (no torchvision).

Conventions used throughout:
- boxes are ``xyxy`` in pixels, ``x1 <= x2`` and ``y1 <= y2``; a box covers the continuous
  interval ``[x1, x2] x [y1, y2]`` (no ``+1`` pixel convention), so its area is
  ``(x2 - x1) * (y2 - y1)``;
- box deltas use the standard R-CNN encoding ``(dx, dy, dw, dh)`` relative to an anchor,
  divided by a per-coordinate ``std`` so that targets have roughly unit scale;
- anchors are listed level by level, then row-major over the feature map (y, then x), then
  over the anchor shapes of a location: the same order as a head's
  ``(B, K*C, H, W) -> (B, H, W, K, C) -> (B, H*W*K, C)`` flattening.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# exp() of a larger log-scale would overflow; also caps a predicted box at 1000/16 x its anchor
# (the Detectron convention).
_MAX_LOG_SCALE = math.log(1000.0 / 16)
DEFAULT_BOX_STD = (0.1, 0.1, 0.2, 0.2)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area; degenerate (inverted) boxes count as 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def _intersection(a: Tensor, b: Tensor) -> Tensor:
    """(N, 4), (M, 4) -> (N, M) intersection areas."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union.

    a: (N, 4) xyxy, b: (M, 4) xyxy -> (N, M). A pair whose union is empty (two zero-area
    boxes) has IoU 0, not NaN.
    """
    inter = _intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def box_ioa(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over the area of ``a`` (how much of each ``a`` lies inside ``b``).

    a: (N, 4), b: (M, 4) -> (N, M). Used to find anchors lying inside *ignore* regions, which
    are often large crowd boxes where IoU is small even for a fully covered anchor.
    """
    inter = _intersection(a, b)
    return inter / box_area(a)[:, None].clamp(min=torch.finfo(inter.dtype).tiny)


def box_giou_aligned(a: Tensor, b: Tensor) -> Tensor:
    """Generalized IoU of matching rows: a, b (N, 4) -> (N,), in [-1, 1]."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_area(a) + box_area(b) - inter
    eps = torch.finfo(a.dtype).eps
    iou = inter / union.clamp(min=eps)
    # smallest enclosing box C: GIoU = IoU - |C \ union| / |C|
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    return iou - (hull - union) / hull.clamp(min=eps)


def _center_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: Tensor, anchors: Tensor, std: Sequence[float] = DEFAULT_BOX_STD) -> Tensor:
    """Boxes (..., 4) xyxy relative to anchors (..., 4) xyxy -> deltas (..., 4).

    ``dx = (cx - cx_a) / w_a / std[0]``, ``dy`` likewise, ``dw = log(w / w_a) / std[2]``,
    ``dh`` likewise. Boxes must have positive width and height.
    """
    cx, cy, w, h = _center_size(boxes)
    acx, acy, aw, ah = _center_size(anchors)
    deltas = torch.stack(
        [(cx - acx) / aw, (cy - acy) / ah, torch.log(w / aw), torch.log(h / ah)], dim=-1
    )
    return deltas / deltas.new_tensor(std)


def decode(deltas: Tensor, anchors: Tensor, std: Sequence[float] = DEFAULT_BOX_STD) -> Tensor:
    """Inverse of :func:`encode`: deltas (..., 4) + anchors (..., 4) -> boxes (..., 4) xyxy.

    Log-scales are clamped at log(1000/16) so early, wild predictions cannot overflow.
    """
    d = deltas * deltas.new_tensor(std)
    acx, acy, aw, ah = _center_size(anchors)
    cx = acx + d[..., 0] * aw
    cy = acy + d[..., 1] * ah
    w = aw * torch.exp(d[..., 2].clamp(max=_MAX_LOG_SCALE))
    h = ah * torch.exp(d[..., 3].clamp(max=_MAX_LOG_SCALE))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip (..., 4) xyxy boxes to an image of size (H, W)."""
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    boxes: (N, 4) xyxy, scores: (N,) -> int64 indices of the kept boxes, by decreasing score.
    A box is dropped when its IoU with an already kept, higher-scored box is *greater* than
    ``iou_threshold`` (torchvision's rule). Equal scores keep their input order (stable sort),
    so the result is deterministic with ties and duplicates.

    The (N, N) overlap test is vectorized on the boxes' device; only the O(N) greedy sweep
    runs on the host, over a boolean matrix. Memory is N^2 bytes: cap N (top-k) beforehand.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    # over[i, j]: sorted box i would suppress sorted box j (j after i); built in row blocks
    # so the float IoU never exceeds block x N.
    over = torch.empty(n, n, dtype=torch.bool, device=boxes.device)
    block = 1024
    for start in range(0, n, block):
        over[start : start + block] = (
            box_iou(sorted_boxes[start : start + block], sorted_boxes) > iou_threshold
        )
    over = torch.triu(over, diagonal=1)
    over_np = over.cpu().numpy()
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over_np[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS run independently per group id (e.g. per class or per image).

    boxes: (N, 4), scores: (N,), groups: (N,) int -> kept indices by decreasing score.
    Boxes of different groups are shifted apart by more than the largest coordinate, so they
    never overlap and one :func:`nms` call serves all groups.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offset = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + groups.to(boxes.dtype)[:, None] * offset
    return nms(shifted, scores, iou_threshold)


def anchor_shapes(height: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Anchor shapes of one level: (K, 2) as (w, h), K = len(scales) * len(ratios).

    Anchors are defined by their *height* (``height * scale``) and width/height ratio, the
    natural parametrization for upright pedestrians (KAIST's "reasonable" filter is a height
    threshold). Order: scale-major, then ratio.
    """
    shapes = [(height * s * r, height * s) for s in scales for r in ratios]
    return torch.tensor(shapes, dtype=torch.float32)


def grid_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    shapes: Sequence[Tensor],
    device: torch.device | None = None,
) -> Tensor:
    """All anchors of a feature pyramid: (sum_l H_l * W_l * K_l, 4) xyxy in pixels.

    feature_sizes: (H_l, W_l) per level; strides: pixels per feature cell per level;
    shapes: (K_l, 2) (w, h) per level. The anchor centers sit at cell centers
    ``((x + 0.5) * stride, (y + 0.5) * stride)``.
    """
    per_level = []
    for (fh, fw), stride, wh in zip(feature_sizes, strides, shapes, strict=True):
        ys = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
        wh = wh.to(device)
        half = torch.cat([-wh / 2, wh / 2], dim=1)[None]  # (1, K, 4)
        per_level.append((centers + half).reshape(-1, 4))
    return torch.cat(per_level, dim=0)
