"""GAFF fusion (MD eq. 1-3), its losses and the foreground-mask builders, on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from md.errors import MdError
from md.models import TwoStreamTeacher
from md.models.gaff import (
    GAFF,
    GAFFLoss,
    foreground_from_boxes,
    foreground_from_labels,
)


def _force_constant(conv: nn.Conv2d, biases: list[float]) -> None:
    """Zero weights + chosen biases: the conv outputs those constants everywhere."""
    with torch.no_grad():
        conv.weight.zero_()
        assert conv.bias is not None
        conv.bias.copy_(torch.tensor(biases))


def test_fusion_equations_with_known_masks() -> None:
    gaff = GAFF(channels=2)
    _force_constant(gaff.intra_vis, [0.0])  # sigmoid(0) = 0.5
    _force_constant(gaff.intra_th, [math.log(3.0)])  # sigmoid(ln 3) = 0.75
    _force_constant(gaff.inter, [0.0, math.log(3.0)])  # softmax -> (0.25 vis, 0.75 th)
    f_vis, f_th = torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 4)
    out = gaff(f_vis, f_th)

    assert set(out) == {"fused", "intra_vis", "intra_th", "inter", "teacher_mask"}
    torch.testing.assert_close(out["intra_vis"], torch.full((1, 1, 3, 4), 0.5))
    torch.testing.assert_close(out["intra_th"], torch.full((1, 1, 3, 4), 0.75))
    torch.testing.assert_close(out["inter"][:, 0], torch.full((1, 3, 4), 0.25))
    torch.testing.assert_close(out["inter"][:, 1], torch.full((1, 3, 4), 0.75))
    # eq. 1-2: (f_vis·1.5·1.25 + f_th·1.75·1.75) / 2 = 0.9375·f_vis + 1.53125·f_th
    torch.testing.assert_close(out["fused"], 0.9375 * f_vis + 1.53125 * f_th)
    # eq. 3: 0.5·0.25 + 0.75·0.75 = 0.6875
    torch.testing.assert_close(out["teacher_mask"], torch.full((1, 1, 3, 4), 0.6875))


def test_teacher_mask_in_unit_interval_and_shapes() -> None:
    torch.manual_seed(0)
    gaff = GAFF(channels=8)
    f_vis, f_th = 10 * torch.randn(2, 8, 5, 6), 10 * torch.randn(2, 8, 5, 6)
    out = gaff(f_vis, f_th)
    assert out["fused"].shape == (2, 8, 5, 6)
    assert out["inter"].shape == (2, 2, 5, 6)
    torch.testing.assert_close(out["inter"].sum(1), torch.ones(2, 5, 6))
    mask = out["teacher_mask"]
    assert mask.shape == (2, 1, 5, 6)
    assert mask.min() >= 0 and mask.max() <= 1


def _inter_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 1, 2, 3) intra masks and foreground; per pixel the expected label/valid:
    (0,0) vis err .1 < th err .8 -> visible;  (0,1) th err .05 < vis err .7 -> thermal;
    (0,2) errs .2/.15 differ by .05 < margin -> tie; (1,0) equal errs -> tie;
    (1,1) vis err .6 > th err .2 -> thermal;  (1,2) background -> ignored."""
    fg = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]).view(1, 1, 2, 3)
    intra_vis = torch.tensor([[0.9, 0.3, 0.8], [0.5, 0.4, 0.9]]).view(1, 1, 2, 3)
    intra_th = torch.tensor([[0.2, 0.95, 0.85], [0.5, 0.8, 0.1]]).view(1, 1, 2, 3)
    return intra_vis, intra_th, fg


def test_inter_label_selection_with_ties_and_background() -> None:
    intra_vis, intra_th, fg = _inter_case()
    label, valid = GAFFLoss(tie_margin=0.1).inter_labels(intra_vis, intra_th, fg)
    assert valid.view(2, 3).tolist() == [[True, True, False], [False, True, False]]
    assert label.view(2, 3)[valid.view(2, 3)].tolist() == [0, 1, 1]


def test_inter_cross_entropy_value() -> None:
    intra_vis, intra_th, fg = _inter_case()
    p_vis = torch.tensor([[0.8, 0.3, 0.5], [0.5, 0.6, 0.9]]).view(1, 1, 2, 3)
    inter = torch.cat([p_vis, 1 - p_vis], 1)
    loss = GAFFLoss(tie_margin=0.1)(intra_vis, intra_th, inter, fg)
    # valid pixels: (0,0) label vis p=.8; (0,1) label th p=.7; (1,1) label th p=.4
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.4)) / 3
    # One float32 evaluation of exact values (no reduction order to vary): inputs rounded to
    # float32, 1 - p, log, a 3-term mean; cond(log p) <= 1 / |ln 0.8| = 4.5 -> <= ~40 u.
    # rel 1e-5 = 168 u; a wrong label or pixel moves it by > 10 %.
    assert loss["inter"].item() == pytest.approx(expected, rel=1e-5)


def test_inter_is_grad_safe_zero_without_labelled_pixels() -> None:
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    inter = logits.softmax(1)
    fg = torch.zeros(1, 1, 2, 2)  # all background
    loss = GAFFLoss()(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2), inter, fg)
    assert loss["inter"].item() == 0.0
    loss["inter"].backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_intra_losses() -> None:
    fg = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    inter = torch.full((1, 2, 2, 2), 0.5)
    dice = GAFFLoss("dice")(fg.clone(), fg.clone(), inter, fg)
    assert dice["intra"].item() == pytest.approx(0.0, abs=1e-6)  # perfect masks
    half = torch.full((1, 1, 2, 2), 0.5)
    bce = GAFFLoss("bce")(half, half, inter, fg)
    assert bce["intra"].item() == pytest.approx(2 * math.log(2), rel=1e-5)  # ln 2 per modality
    with pytest.raises(MdError, match="intra_loss"):
        GAFFLoss("focal")


def test_ellipse_raster_hand_checked() -> None:
    # Image 16x16 -> features 4x4 (scale 1/4). Box 0..16 becomes centre (2, 2), radii 2:
    # the corner cells (centres at distance (1.5, 1.5)) fall outside, all others inside.
    boxes = [
        torch.tensor([[0.0, 0.0, 16.0, 16.0]]),
        # ignored big box; tiny box (4,4)-(6,6) -> (1,1)-(1.5,1.5) holds no cell centre,
        # so only its centre cell (1, 1) is marked.
        torch.tensor([[8.0, 8.0, 16.0, 16.0], [4.0, 4.0, 6.0, 6.0]]),
        torch.zeros(0, 4),
    ]
    ignore = [torch.tensor([False]), torch.tensor([True, False]), torch.zeros(0, dtype=torch.bool)]
    fg = foreground_from_boxes(boxes, (16, 16), (4, 4), ignore)
    assert fg.shape == (3, 1, 4, 4)
    assert fg[0, 0].tolist() == [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    expected = torch.zeros(4, 4)
    expected[1, 1] = 1
    assert torch.equal(fg[1, 0], expected)
    assert fg[2].sum() == 0


def test_ellipse_raster_non_square_scaling() -> None:
    # Image (H=8, W=32) -> (2, 8): box x 8..24, y 0..8 -> cells x 2..6, y 0..2;
    # centre (4, 1), radii (2, 1): row centres y=.5/1.5 need |x-4| <= 2·sqrt(.75) = 1.73,
    # true for cell centres x = 2.5..5.5, false for 1.5 and 6.5.
    fg = foreground_from_boxes([torch.tensor([[8.0, 0.0, 24.0, 8.0]])], (8, 32), (2, 8))
    assert fg[0, 0].tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]]


def test_foreground_from_labels_area_fraction() -> None:
    labels = torch.tensor(
        [[0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [3, 8, 5, 5]], dtype=torch.long
    ).unsqueeze(0)
    fg = foreground_from_labels(labels, (2, 2))
    assert fg.shape == (1, 1, 2, 2)
    assert fg[0, 0].tolist() == [[0.75, 0.0], [0.5, 0.5]]


def test_segmentation_teacher_any_foreground_is_binary_by_hand() -> None:
    labels = torch.tensor(
        [[0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [3, 8, 5, 0]], dtype=torch.long
    ).unsqueeze(0)
    batch = {"labels": labels}
    soft = TwoStreamTeacher("segmentation", width=0.125).foreground(batch, (2, 2))
    hard = TwoStreamTeacher("segmentation", width=0.125, seg_foreground="any").foreground(
        batch, (2, 2)
    )
    assert soft[0, 0].tolist() == [[0.75, 0.0], [0.5, 0.25]]  # the default: area fraction
    assert hard[0, 0].tolist() == [[1.0, 0.0], [1.0, 1.0]]  # any non-background pixel
    with pytest.raises(MdError, match="seg_foreground"):
        TwoStreamTeacher("segmentation", seg_foreground="majority")
