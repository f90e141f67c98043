"""Detection head: assignment (IoU, ignore regions, Mutual Guidance), focal loss, a tiny
overfit run, predict() format and limits, decision-level average()."""

from __future__ import annotations

import math

import pytest
import torch

from md.models.heads import build_head
from md.models.heads.boxes import box_iou
from md.models.heads.detection import (
    Assignment,
    DetectionHead,
    FocalLoss,
    iou_assign,
    mutual_guidance_assign,
)
from tests.fp import U32

CHANNELS = {"c3": 8, "c4": 8, "c5": 8}
GT = torch.tensor([[0.0, 0, 10, 20]])
# anchor IoUs with GT: 1.0, 0.7, 0.45, 0.3, 0.0
ANCHORS = torch.tensor(
    [[0.0, 0, 10, 20], [0, 0, 10, 14], [0, 0, 10, 9], [0, 0, 10, 6], [100, 100, 110, 120]]
)


def _counts(assignment: Assignment) -> tuple[int, int, int]:
    """(positives, ignored, negatives) for the classification loss."""
    pos = int(assignment.cls_target.sum())
    valid = assignment.cls_valid
    return pos, int((~valid).sum()), int(valid.sum()) - pos


def _feats(
    batch: int = 1, size: tuple[int, int] = (64, 64), seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return {
        k: torch.randn(batch, c, h // s, w // s, generator=gen)
        for (k, c), s in zip(CHANNELS.items(), (8, 16, 32), strict=True)
    }


def _head(**kwargs: object) -> DetectionHead:
    torch.manual_seed(0)
    head = build_head("detection", CHANNELS, neck_channels=16, tower_depth=1, **kwargs)
    assert isinstance(head, DetectionHead)
    return head


def test_iou_assign_hand_case() -> None:
    a = iou_assign(ANCHORS, GT, torch.tensor([False]))
    assert _counts(a) == (2, 1, 2)
    assert a.cls_target.tolist() == [1, 1, 0, 0, 0]
    assert a.cls_valid.tolist() == [True, True, False, True, True]
    assert a.box_pos.tolist() == [True, True, False, False, False]
    torch.testing.assert_close(a.box_target[:2], GT.expand(2, 4))


def test_iou_assign_gives_each_gt_its_best_anchor() -> None:
    # no anchor reaches IoU 0.5 with this GT (best: 0.45): the best one is still positive
    a = iou_assign(ANCHORS[2:], GT)
    assert a.cls_target.tolist() == [1, 0, 0]
    assert a.box_pos.tolist() == [True, False, False]


def test_ignored_gt_makes_no_positives_and_no_negatives() -> None:
    a = iou_assign(ANCHORS, GT, torch.tensor([True]))
    # all four anchors touching the ignored box (IoU >= 0.4 or inside it) are ignored
    assert _counts(a) == (0, 4, 1)
    assert not a.box_pos.any()
    # a small anchor inside a large ignored crowd box has a tiny IoU but is still ignored
    crowd = iou_assign(
        torch.tensor([[10.0, 10, 20, 30]]), torch.tensor([[0.0, 0, 100, 100]]), torch.tensor([True])
    )
    assert _counts(crowd) == (0, 1, 0)


def test_ignored_gt_next_to_a_real_one() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 20], [100, 100, 110, 120]])
    a = iou_assign(ANCHORS, boxes, torch.tensor([False, True]))
    assert _counts(a) == (2, 2, 1)  # anchor 4 sits on the ignored box
    assert a.cls_valid[4].item() is False


def test_no_gt_means_all_negative() -> None:
    a = iou_assign(ANCHORS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))
    assert _counts(a) == (0, 0, 5)


def test_mutual_guidance_localize_to_classify() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 20], [50, 50, 60, 70]])
    # anchor 0 matches the GT but predicts a box elsewhere; anchor 1 predicts the GT exactly
    pred = torch.tensor([[30.0, 30, 40, 50], [0, 0, 10, 20]])
    a = mutual_guidance_assign(anchors, GT, None, pred, torch.zeros(2))
    assert a.cls_target.tolist() == [0, 1]  # classification follows the predicted box
    assert a.box_pos.tolist() == [True, False]  # regression follows the anchor (score 0)
    torch.testing.assert_close(a.box_target[0], GT[0])


def test_mutual_guidance_classify_to_localize() -> None:
    # anchor IoUs with GT: 0.6, 0.5, 0.45 -> 2 regression positives
    anchors = torch.tensor([[0.0, 0, 10, 12], [0, 0, 10, 10], [0, 0, 10, 9]])
    torch.testing.assert_close(box_iou(GT, anchors)[0], torch.tensor([0.6, 0.5, 0.45]))
    scores = torch.tensor([0.0, 0.0, 1.0])
    # weighted IoU = IoU ** ((2 - s) / 2): 0.6, 0.5, sqrt(0.45) = 0.67
    a = mutual_guidance_assign(anchors, GT, None, anchors, scores)
    assert a.box_pos.tolist() == [True, False, True]
    # with predictions equal to the anchors, classification is plain IoU ranking
    assert a.cls_target.tolist() == [1, 1, 0]
    assert a.cls_valid.tolist() == [True, True, False]  # 0.45 >= 0.4: ignored


def test_mutual_guidance_respects_ignored_gt() -> None:
    a = mutual_guidance_assign(ANCHORS, GT, torch.tensor([True]), ANCHORS, torch.rand(5))
    assert _counts(a) == (0, 4, 1)
    assert not a.box_pos.any()


def test_mutual_guidance_in_head_gives_positives() -> None:
    head = _head(assign="mutual_guidance")
    out = head(_feats(batch=2), (64, 64))
    boxes = [torch.tensor([[20.0, 10, 36, 50]]), torch.tensor([[5.0, 5, 25, 60], [40, 10, 56, 50]])]
    logits, deltas = out["cls_logits"][1, :, 0], out["box_deltas"][1]
    a = head._assign_image(out["anchors"], boxes[1], None, logits, deltas)
    assert a.cls_target.sum() >= 2 and a.box_pos.sum() >= 2
    losses = head.loss(
        out, {"boxes": boxes, "box_ignore": [torch.tensor([False]), torch.tensor([False, False])]}
    )
    assert set(losses) == {"cls", "box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_focal_loss_hand_computed() -> None:
    logits, targets = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    # anchor 0: positive, p = 0.5 -> 0.25 * (1 - 0.5)^2 * ln 2
    # anchor 1: negative, p = sigmoid(2) -> 0.75 * p^2 * -ln(1 - p)
    p = 1 / (1 + math.exp(-2.0))
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * p**2 * -math.log(1 - p)
    assert FocalLoss(0.25, 2.0)(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1.280882, rel=1e-5)


def test_forward_shapes_anchor_count_and_prior() -> None:
    head = _head()
    out = head(_feats(batch=2, size=(64, 96)), (64, 96))
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2)]  # P3..P5 and P6
    num = 6 * sum(h * w for h, w in sizes)
    assert out["cls_logits"].shape == (2, num, 1)
    assert out["box_deltas"].shape == (2, num, 4)
    assert out["anchors"].shape == (num, 4)
    assert out["image_size"] == (64, 96)
    # prior-probability init: every anchor starts near p = 0.01
    assert out["cls_logits"].sigmoid().mean().item() == pytest.approx(0.01, rel=0.2)
    assert head(_feats(batch=1, size=(64, 96)), (64, 96))["anchors"] is out["anchors"]  # cached


def test_empty_image_loss_is_finite() -> None:
    head = _head()
    out = head(_feats(), (64, 64))
    losses = head.loss(out, {"boxes": [torch.zeros(0, 4)]})
    assert losses["box"].item() == 0.0 and torch.isfinite(losses["cls"])
    (losses["cls"] + losses["box"]).backward()  # still connected to the graph


@pytest.mark.parametrize("assign", ["iou", "mutual_guidance"])
def test_tiny_head_overfits_one_image(assign: str) -> None:
    head = _head(assign=assign)
    feats = _feats()
    target = {"boxes": [torch.tensor([[20.0, 10, 36, 50]])], "box_ignore": [torch.tensor([False])]}
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(25):
        losses = head.loss(head(feats, (64, 64)), target)
        total = losses["cls"] + losses["box"]
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < 0.3 * history[0]
    best = head.predict(head(feats, (64, 64)))[0]
    assert box_iou(best["boxes"][:1], target["boxes"][0]).item() > 0.5


def test_predict_format_and_limits() -> None:
    head = _head()
    out = head(_feats(batch=2), (64, 64))
    gen = torch.Generator().manual_seed(1)
    out["cls_logits"] = torch.randn(out["cls_logits"].shape, generator=gen) * 3
    out["box_deltas"] = torch.randn(out["box_deltas"].shape, generator=gen)
    dets = head.predict(out, score_thresh=0.2, nms_iou=0.5, max_det=7)
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores"}
        assert d["boxes"].shape == (len(d["scores"]), 4) and 0 < len(d["scores"]) <= 7
        assert (d["scores"] > 0.2).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (
            (d["boxes"] >= 0).all()
            and (d["boxes"][:, 0::2] <= 64).all()
            and (d["boxes"][:, 1::2] <= 64).all()
        )
        overlaps = box_iou(d["boxes"], d["boxes"]).triu(diagonal=1)
        assert (overlaps <= 0.5).all()
    many = head.predict(out, score_thresh=0.0, nms_iou=1.0, max_det=1000, pre_nms_topk=50)
    assert all(len(d["scores"]) <= 50 for d in many)


def test_average_of_identical_outputs_predicts_the_same() -> None:
    head = _head()
    out = head(_feats(), (64, 64))
    out["cls_logits"] = (
        out["cls_logits"] + torch.linspace(-3, 8, out["cls_logits"].shape[1])[None, :, None]
    )
    fused = head.average([out, out])
    # In reals logsumexp(ls(x), ls(x)) - log 2 - (the same for -x) = ls(x) - ls(-x) = x
    # (ls = logsigmoid). In float32 each side rounds ls (<= 2 ulp), log 2, the add and the
    # subtraction of log 2, all on values <= |x| + 2 ln 2 (|ls(x)| + |ls(-x)| = |x| + 2 ln(1 +
    # e^-|x|)), and the final difference once: <= 16 u (|x| + 4 ln 2) per element.
    x = out["cls_logits"].detach().double()
    bound = 16 * U32 * (x.abs() + 4 * math.log(2))
    excess = float(((fused["cls_logits"].detach().double() - x).abs() / bound).max())
    assert excess <= 1, f"{excess:.3g}x the float32 bound"
    (a,), (b,) = head.predict(out), head.predict(fused)
    assert torch.equal(a["boxes"], b["boxes"])  # the same deltas: (d + d) / 2 is exact
    # sigmoid: |dp| / p = (1 - p) |dx| <= max bound on the logits, plus the sigmoid's 2 u.
    torch.testing.assert_close(b["scores"], a["scores"], rtol=float(bound.max()) + 2 * U32, atol=0)


def test_average_is_mean_probability() -> None:
    head = _head()
    out1 = head(_feats(seed=1), (64, 64))
    out2 = head(_feats(seed=2), (64, 64))
    out2["cls_logits"] = out2["cls_logits"] + 4.0
    fused = head.average([out1, out2])
    mean_p = (out1["cls_logits"].sigmoid() + out2["cls_logits"].sigmoid()) / 2
    torch.testing.assert_close(fused["cls_logits"].sigmoid(), mean_p)
    # A mean of two is one rounded add and an exact halving: the same arithmetic.
    assert torch.equal(fused["box_deltas"], (out1["box_deltas"] + out2["box_deltas"]) / 2)


def test_bad_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="assign"):
        build_head("detection", CHANNELS, assign="atss")
    with pytest.raises(ValueError, match="unknown task"):
        build_head("tracking", CHANNELS)
    with pytest.raises(ValueError, match="c<N>"):
        build_head("detection", {"layer3": 8})


def test_giou_loss_and_no_norm_options() -> None:
    head = _head(box_loss="giou", norm="none")
    out = head(_feats(), (64, 64))
    losses = head.loss(out, {"boxes": [torch.tensor([[20.0, 10, 36, 50]])]})
    # at init the predicted boxes are the anchors: 0 < 1 - GIoU < 1 for positives
    assert 0 < losses["box"].item() < 1
    (losses["cls"] + losses["box"]).backward()
