"""Group-reweighted losses (md.train.group_weights): hand-computed weights, bitwise-unchanged
losses without weights, and a weight of 2 acting linearly on the loss and its gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from md.errors import ConfigError
from md.models.heads import build_head
from md.student_train.losses import DistillationLoss
from md.train import group_weights

CHANNELS = {"c3": 8, "c4": 8, "c5": 8}


def test_inverse_frequency_hand_computed() -> None:
    # N = 20 samples, K = 2 groups: w = 20 / (2 * n_g)
    assert group_weights.inverse_frequency({"common": 19, "rare": 1}) == {
        "common": 20 / 38,
        "rare": 10.0,
    }
    ids = [f"s{i}" for i in range(4)]
    gw = group_weights.resolve("inverse_frequency", "day_night", None, ids, ["day"] * 3 + ["night"])
    assert gw is not None and gw.weights == {"day": 4 / 6, "night": 2.0}
    assert gw.lineage()["counts"] == {"day": 3, "night": 1}
    w = gw.batch_weights({"id": ["s0", "s3"], "group": ["day", "night"]}, torch.device("cpu"))
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert group_weights.resolve("none", "day_night", None, ids, ["day"] * 4) is None


def test_weights_file(tmp_path: Path) -> None:
    (tmp_path / "groups.json").write_text(json.dumps({"appearance": {"a": "rare", "b": "common"}}))
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"weights": {"rare": 2, "common": 1}}))
    gw = group_weights.resolve(str(f), "appearance", tmp_path, ["a", "b"], ["day", "night"])
    assert gw is not None and gw.weights == {"rare": 2.0, "common": 1.0}
    assert gw.file_sha256 is not None and len(gw.file_sha256) == 64
    f.write_text(json.dumps({"weights": {"rare": 2}}))
    with pytest.raises(ConfigError, match="common"):
        group_weights.resolve(str(f), "appearance", tmp_path, ["a", "b"], ["day", "night"])


def _maps(seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    student = {
        "features": {"c4": torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)},
        "masks": {"c4": torch.rand(2, 1, 5, 6, generator=g, requires_grad=True)},
    }
    targets = {
        "features": {"c4": torch.randn(2, 4, 5, 6, generator=g)},
        "masks": {"c4": torch.rand(2, 1, 5, 6, generator=g)},
    }
    return student, targets


@pytest.mark.parametrize("semantic_loss", ["fmse", "mse"])
def test_distill_unweighted_is_bitwise_the_plain_mean(semantic_loss: str) -> None:
    student, targets = _maps(0)
    loss = DistillationLoss(["c4"], semantic_loss=semantic_loss)
    parts = loss(student, targets)
    s, t = student["masks"]["c4"].flatten(1), targets["masks"]["c4"].flatten(1)
    dice = (2 * (s * t).sum(1) + 1e-6) / (s.sum(1) + t.sum(1) + 1e-6)
    assert torch.equal(parts["attention"], torch.stack([(1 - dice).mean()]).mean())


@pytest.mark.parametrize("semantic_loss", ["fmse", "mse"])
def test_distill_weight_two_is_linear(semantic_loss: str) -> None:
    loss = DistillationLoss(["c4"], semantic_loss=semantic_loss)

    def value_and_grad(w: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        student, targets = _maps(1)
        total = loss(student, targets, torch.tensor(w))["distill"]
        total.backward()
        return total.detach(), student["features"]["c4"].grad.clone()  # type: ignore[union-attr]

    both, g_both = value_and_grad([2.0, 1.0])
    first, g_first = value_and_grad([1.0, 0.0])
    second, g_second = value_and_grad([0.0, 1.0])
    # float32 sums of ~1e2 terms of size ~1: relative error a few 1e-7, tolerance 1e-5
    assert both.item() == pytest.approx(2 * first.item() + second.item(), rel=1e-5)
    torch.testing.assert_close(g_both, 2 * g_first + g_second, rtol=1e-5, atol=1e-7)
    # weight 2 on image 0 doubles exactly image 0's gradient rows, leaves image 1's alone
    torch.testing.assert_close(g_both[0], 2 * g_first[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_both[1], g_second[1], rtol=1e-5, atol=1e-7)


def test_detection_loss_weights() -> None:
    torch.manual_seed(0)
    head = build_head("detection", CHANNELS, neck_channels=16, tower_depth=1)
    g = torch.Generator().manual_seed(0)
    feats = {
        k: torch.randn(2, c, 64 // s, 64 // s, generator=g)
        for (k, c), s in zip(CHANNELS.items(), (8, 16, 32), strict=True)
    }
    out = head(feats, (64, 64))
    boxes = [torch.tensor([[10.0, 8.0, 26.0, 50.0]]), torch.tensor([[30.0, 4.0, 50.0, 60.0]])]
    ignore = [torch.zeros(1, dtype=torch.bool)] * 2
    base = {"boxes": boxes, "box_ignore": ignore}
    plain = head.loss(out, base)
    ones = head.loss(out, {**base, "sample_weight": torch.ones(2)})
    for k in plain:  # same terms, summed in another grouping: float32 rounding only
        assert ones[k].item() == pytest.approx(plain[k].item(), rel=1e-5)
    both = head.loss(out, {**base, "sample_weight": torch.tensor([2.0, 1.0])})
    first = head.loss(out, {**base, "sample_weight": torch.tensor([1.0, 0.0])})
    second = head.loss(out, {**base, "sample_weight": torch.tensor([0.0, 1.0])})
    for k in plain:
        assert both[k].item() == pytest.approx(2 * first[k].item() + second[k].item(), rel=1e-5)
        assert both[k].item() != pytest.approx(plain[k].item(), rel=1e-3)


@pytest.mark.parametrize("class_weights", [None, (0.5, 2.0, 1.0)])
def test_segmentation_loss_weights(class_weights) -> None:
    """Per-image weights on the cross-entropy: all ones is the plain (class-weighted) mean,
    and the loss is linear in them (w = 2 counts an image's pixels twice)."""
    torch.manual_seed(0)
    kw = {} if class_weights is None else {"class_weights": class_weights}
    head = build_head("segmentation", CHANNELS, num_classes=3, **kw)
    g = torch.Generator().manual_seed(1)
    feats = {
        k: torch.randn(2, c, 64 // s, 64 // s, generator=g)
        for (k, c), s in zip(CHANNELS.items(), (8, 16, 32), strict=True)
    }
    out = head(feats, (64, 64))
    labels = torch.randint(0, 3, (2, 64, 64), generator=g)
    base = {"labels": labels}
    plain = head.loss(out, base)["seg"].item()
    ones = head.loss(out, {**base, "sample_weight": torch.ones(2)})["seg"].item()
    # the same 8192 terms summed in another order: float32 rounding, n * eps relative at most
    assert ones == pytest.approx(plain, rel=2 * 8192 * 2**-24)
    both = head.loss(out, {**base, "sample_weight": torch.tensor([2.0, 1.0])})["seg"].item()
    first = head.loss(out, {**base, "sample_weight": torch.tensor([1.0, 0.0])})["seg"].item()
    second = head.loss(out, {**base, "sample_weight": torch.tensor([0.0, 1.0])})["seg"].item()
    assert both == pytest.approx(2 * first + second, rel=1e-5)
    assert both != pytest.approx(plain, rel=1e-3)
