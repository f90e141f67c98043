"""MD transfer losses on tiny tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from md.student_train.losses import (
    AttentionTransferLoss,
    DistillationLoss,
    FocalMSELoss,
    MSELoss,
)


def test_dice_by_hand_per_image_then_mean():
    # image 0: |s·t| = 1, |s| = 1, |t| = 2 -> 1 - 2/3 = 1/3; image 1: identical soft masks,
    # |s·t| = 0.5, |s| + |t| = 2 -> 1 - 2·0.5/2 = 1/2 (soft Dice is 0 only for binary masks).
    s = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]]).view(2, 1, 2, 2)
    t = torch.tensor([[1.0, 1, 0, 0], [0.5, 0.5, 0, 0]]).view(2, 1, 2, 2)
    loss = AttentionTransferLoss(eps=0.0)(s, t)
    assert loss.item() == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_dice_disjoint_is_one_and_empty_masks_are_zero():
    s = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 2, 2)
    assert AttentionTransferLoss()(s, 1 - s).item() == pytest.approx(1.0)
    zeros = torch.zeros(1, 1, 2, 2)
    assert AttentionTransferLoss()(zeros, zeros).item() == pytest.approx(0.0)


def test_focal_mse_one_position_holds_all_the_error():
    # C = 2, H = W = 2; only position (0, 0) differs, by (1, 2): D = 1 + 4 = 5 there, 0 elsewhere.
    t = torch.zeros(1, 2, 2, 2)
    s = t.clone()
    s[0, :, 0, 0] = torch.tensor([1.0, 2.0])
    p = math.exp(5) / (math.exp(5) + 3)  # its softmax weight among 4 positions
    assert FocalMSELoss()(s, t).item() == pytest.approx(p * 5 / 2, rel=1e-6)
    w = FocalMSELoss().weights(s, t)
    assert w.shape == (1, 2, 2) and w.sum().item() == pytest.approx(1.0)
    assert w[0, 0, 0].item() == pytest.approx(p)


def test_focal_mse_softmax_of_the_channel_mean_by_hand():
    # the same case with softmax_input="mean": the weight of (0, 0) is softmax of D / C = 2.5
    t = torch.zeros(1, 2, 2, 2)
    s = t.clone()
    s[0, :, 0, 0] = torch.tensor([1.0, 2.0])
    p = math.exp(2.5) / (math.exp(2.5) + 3)
    loss = FocalMSELoss(softmax_input="mean")
    assert loss(s, t).item() == pytest.approx(p * 5 / 2, rel=1e-6)
    assert loss.weights(s, t)[0, 0, 0].item() == pytest.approx(p)
    with pytest.raises(ValueError, match="softmax_input"):
        FocalMSELoss(softmax_input="max")


def test_focal_mse_uniform_error_equals_mse_and_batch_mean():
    t = torch.zeros(2, 3, 2, 2)
    s = torch.full_like(t, 0.5)
    s[1] = 1.0  # image 1: every d = 1 -> loss 1; image 0: d = 0.25 -> 0.25
    assert FocalMSELoss()(s, t).item() == pytest.approx((0.25 + 1.0) / 2)
    assert MSELoss()(s, t).item() == pytest.approx((0.25 + 1.0) / 2)


def test_mse_by_hand():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    assert MSELoss()(s, torch.zeros_like(s)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def _grads(weights_grad: bool) -> tuple[torch.Tensor, float, float]:
    # C = 1, two positions: f_s = (a, b), f_t = 0 -> D = (a², b²).
    a, b = 2.0, 0.5
    f = torch.tensor([a, b]).view(1, 1, 1, 2).requires_grad_()
    FocalMSELoss(weights_grad)(f, torch.zeros_like(f)).backward()
    assert f.grad is not None
    pa = math.exp(a * a) / (math.exp(a * a) + math.exp(b * b))
    return f.grad.flatten(), pa, 1 - pa


def test_focal_mse_default_weights_are_constants():
    # dL/dD_j = p_j / C, so dL/df_j = 2 f_j p_j: every position pulled towards the teacher.
    g, pa, pb = _grads(weights_grad=False)
    assert g.tolist() == pytest.approx([2 * 2.0 * pa, 2 * 0.5 * pb], rel=1e-5)
    assert (g > 0).all()


def test_focal_mse_weights_grad_pushes_easy_positions_away():
    # Through the softmax: dL/dD_j = p_j (1 + D_j - E_p[D]) / C; negative at the easy position.
    g, pa, pb = _grads(weights_grad=True)
    mean_d = pa * 4.0 + pb * 0.25
    want = [2 * 2.0 * pa * (1 + 4.0 - mean_d), 2 * 0.5 * pb * (1 + 0.25 - mean_d)]
    assert g.tolist() == pytest.approx(want, rel=1e-5)
    assert g[1] < 0


def test_distillation_loss_switches_and_weights():
    levels = ("c3", "c4")
    torch.manual_seed(0)
    student = {
        "features": {lv: torch.rand(2, 4, 3, 3) for lv in levels},
        "masks": {lv: torch.rand(2, 1, 3, 3) for lv in levels},
    }
    teacher = {
        "features": {lv: torch.rand(2, 4, 3, 3) for lv in levels},
        "masks": {lv: torch.rand(2, 1, 3, 3) for lv in levels},
    }
    full = DistillationLoss(levels, attention_weight=2.0, semantic_weight=0.5)(student, teacher)
    att = torch.stack(
        [AttentionTransferLoss()(student["masks"][lv], teacher["masks"][lv]) for lv in levels]
    ).mean()
    sem = torch.stack(
        [FocalMSELoss()(student["features"][lv], teacher["features"][lv]) for lv in levels]
    ).mean()
    # The same per-level losses stacked and averaged as the module does: exact.
    assert torch.equal(full["attention"], att) and torch.equal(full["semantic"], sem)
    assert full["distill"].item() == pytest.approx(2.0 * att.item() + 0.5 * sem.item())
    only_a = DistillationLoss(levels, semantic=False)(student, teacher)
    assert set(only_a) == {"attention", "distill"}
    mse = DistillationLoss(levels, attention=False, semantic_loss="mse")(student, teacher)
    assert set(mse) == {"semantic", "distill"}
    assert mse["semantic"].item() == pytest.approx(
        sum(MSELoss()(student["features"][lv], teacher["features"][lv]).item() for lv in levels) / 2
    )


def test_distillation_loss_passes_the_fmse_softmax_input():
    assert DistillationLoss(("c3",), focal_softmax="mean").semantic_loss.softmax_input == "mean"
    assert DistillationLoss(("c3",)).semantic_loss.softmax_input == "sum"  # eq. 4 by default
