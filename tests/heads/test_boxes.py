"""Box ops: IoU against hand-computed values, encode/decode, NMS against a brute-force
reference, anchor grids."""

from __future__ import annotations

import math

import pytest
import torch

from md.models.heads.boxes import (
    anchor_shapes,
    batched_nms,
    box_giou_aligned,
    box_ioa,
    box_iou,
    clip_boxes,
    decode,
    encode,
    grid_anchors,
    nms,
)
from tests.fp import U32


def test_box_iou_hand_computed() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 4, 4], [5, 5, 6, 6]])
    expected = torch.tensor(
        [
            [1.0, 1 / 7, 4 / 16, 0.0],  # overlap 1x1 of two 2x2 boxes: 1 / (4 + 4 - 1)
            [1 / 7, 1.0, 4 / 16, 0.0],
        ]
    )
    torch.testing.assert_close(box_iou(a, b), expected)


def test_box_iou_zero_area_is_zero_not_nan() -> None:
    point = torch.tensor([[1.0, 1, 1, 1]])
    assert box_iou(point, point).item() == 0.0


def test_box_ioa_and_giou() -> None:
    inner, outer = torch.tensor([[1.0, 1, 3, 3]]), torch.tensor([[0.0, 0, 4, 4]])
    assert box_ioa(inner, outer).item() == pytest.approx(1.0)
    assert box_ioa(outer, inner).item() == pytest.approx(0.25)
    a = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    b = torch.tensor([[2.0, 0, 3, 1], [0, 0, 2, 2]])
    # disjoint unit squares 1 apart: IoU 0, hull 3, union 2 -> GIoU = -1/3
    torch.testing.assert_close(box_giou_aligned(a, b), torch.tensor([-1 / 3, 1.0]))


def _random_boxes(n: int, gen: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    boxes, anchors = _random_boxes(50, gen), _random_boxes(50, gen)
    for std in [(0.1, 0.1, 0.2, 0.2), (1.0, 1.0, 1.0, 1.0)]:
        torch.testing.assert_close(decode(encode(boxes, anchors, std), anchors, std), boxes)
    torch.testing.assert_close(decode(torch.zeros(50, 4), anchors), anchors)
    # a box twice the anchor's width, same center: dw = log 2 / 0.2
    anchor = torch.tensor([[0.0, 0, 10, 10]])
    box = torch.tensor([[-5.0, 0, 15, 10]])
    torch.testing.assert_close(encode(box, anchor), torch.tensor([[0.0, 0, math.log(2) / 0.2, 0]]))


def test_decode_clamps_huge_scales() -> None:
    out = decode(torch.tensor([[0.0, 0, 1e4, 1e4]]), torch.tensor([[0.0, 0, 16, 16]]))
    assert torch.isfinite(out).all()
    # 16 * exp(float32(ln 62.5)) in float32: the rounded log (<= 4.2 u absolute -> 4.2 u
    # relative), exp (<= 1 ulp = 2 u), cx -+ w / 2 and their difference (2 u of the width):
    # <= 8.2 u relative; we allow 16 u (measured 1 u).
    assert out[0, 2] - out[0, 0] == pytest.approx(1000.0, rel=16 * U32)


def test_clip_boxes() -> None:
    clipped = clip_boxes(torch.tensor([[-5.0, -5, 50, 70]]), (60, 40))
    assert clipped.tolist() == [[0.0, 0.0, 40.0, 60.0]]


def _iou_ref(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_ref(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Textbook greedy NMS; ties broken by input index."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    keep: list[int] = []
    for i in order:
        if all(_iou_ref(boxes[i].tolist(), boxes[k].tolist()) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed: int, thr: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(120, gen)
    # identical boxes (with equal and with different scores) and many score ties
    boxes = torch.cat([boxes, boxes[:10], boxes[5:15]])
    scores = (torch.rand(len(boxes), generator=gen) * 10).round() / 10
    assert nms(boxes, scores, thr).tolist() == _nms_ref(boxes, scores, thr)


def test_nms_edge_cases() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    box = torch.tensor([[0.0, 0, 10, 10]])
    # duplicates with equal scores: the first one wins
    assert nms(box.repeat(3, 1), torch.ones(3), 0.5).tolist() == [0]
    # IoU exactly at the threshold is kept (strictly greater suppresses)
    half = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])  # IoU 0.5
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_batched_nms_keeps_groups_apart() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    groups = torch.tensor([0, 1, 0])
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [0, 1]


def test_anchor_grid_count_centers_and_shapes() -> None:
    scales, ratios = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.41, 0.6)
    sizes, strides = [(8, 10), (4, 5), (2, 3)], [8, 16, 32]
    shapes = [anchor_shapes(4.0 * s, scales, ratios) for s in strides]
    anchors = grid_anchors(sizes, strides, shapes)
    assert anchors.shape == (6 * sum(h * w for h, w in sizes), 4)
    start = 0
    for (h, w), stride in zip(sizes, strides, strict=True):
        level = anchors[start : start + 6 * h * w].reshape(h, w, 6, 4)
        start += 6 * h * w
        cx, cy = (level[..., 0] + level[..., 2]) / 2, (level[..., 1] + level[..., 3]) / 2
        torch.testing.assert_close(
            cx, ((torch.arange(w) + 0.5) * stride)[None, :, None].expand(h, w, 6)
        )
        torch.testing.assert_close(
            cy, ((torch.arange(h) + 0.5) * stride)[:, None, None].expand(h, w, 6)
        )
        heights = level[0, 0, :, 3] - level[0, 0, :, 1]
        widths = level[0, 0, :, 2] - level[0, 0, :, 0]
        expected_h = torch.tensor([4.0 * stride * s for s in scales for _ in ratios])
        torch.testing.assert_close(heights, expected_h)
        torch.testing.assert_close(widths / heights, torch.tensor(list(ratios) * 3))
