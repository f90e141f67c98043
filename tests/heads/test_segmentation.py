"""PSPNet segmentation head: shapes, pyramid bins, loss, predict, decision-level average."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from md.models.heads import build_head
from md.models.heads.segmentation import PyramidPooling, SegmentationHead

CHANNELS = {"c3": 8, "c4": 12, "c5": 16}


def _feats(batch: int, size: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return {
        k: torch.randn(batch, c, -(-h // s), -(-w // s), generator=gen)
        for (k, c), s in zip(CHANNELS.items(), (8, 16, 32), strict=True)
    }


def _head(**kwargs: object) -> SegmentationHead:
    torch.manual_seed(0)
    head = build_head(
        "segmentation", CHANNELS, psp_channels=16, decoder_channels=16, c3_channels=8, **kwargs
    )
    assert isinstance(head, SegmentationHead)
    return head


@pytest.mark.parametrize("use_c3", [True, False])
@pytest.mark.parametrize("size", [(64, 96), (60, 80)])  # 60x80: c5 is 2x3 (not a multiple of 32)
def test_logits_at_image_size(use_c3: bool, size: tuple[int, int]) -> None:
    head = _head(use_c3=use_c3)
    out = head(_feats(2, size), size)
    assert out["logits"].shape == (2, 9, *size)
    assert head.predict(out).shape == (2, *size) and head.predict(out).dtype == torch.int64


def test_pyramid_pooling_bins_and_channels() -> None:
    ppm = PyramidPooling(16, bins=(1, 2, 3, 6))
    pooled_sizes = []
    for branch in ppm.branches:
        assert isinstance(branch, torch.nn.Sequential)
        branch[0].register_forward_hook(
            lambda _m, _i, out: pooled_sizes.append(tuple(out.shape[-2:]))
        )
    x = torch.randn(2, 16, 12, 12)
    y = ppm(x)
    assert pooled_sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]
    assert y.shape == (2, 16 + 4 * 4, 12, 12) and ppm.out_channels == 32
    torch.testing.assert_close(y[:, :16], x)  # the input is passed through
    # the bin-1 branch is a constant map (global context)
    assert torch.allclose(y[:, 16:20], y[:, 16:20, :1, :1].expand(-1, -1, 12, 12))


def test_loss_is_cross_entropy_over_all_classes() -> None:
    head = _head()
    size = (32, 32)
    out = head(_feats(2, size), size)
    labels = torch.randint(0, 9, (2, *size), generator=torch.Generator().manual_seed(0))
    labels[0] = 0  # "unlabeled" pixels are trained, not ignored
    losses = head.loss(out, {"labels": labels})
    assert set(losses) == {"seg"}
    torch.testing.assert_close(losses["seg"], F.cross_entropy(out["logits"], labels))
    losses["seg"].backward()


def test_ignore_index_option() -> None:
    head = _head(ignore_index=255)
    size = (64, 64)  # c5 2x2: BatchNorm needs more than one value per channel in training
    out = head(_feats(1, size), size)
    labels = torch.full((1, *size), 255)
    labels[0, :4] = 2
    loss = head.loss(out, {"labels": labels})["seg"]
    torch.testing.assert_close(loss, F.cross_entropy(out["logits"][:, :, :4], labels[:, :4]))


def test_label_size_mismatch_fails_clearly() -> None:
    head = _head()
    out = head(_feats(1, (64, 64)), (64, 64))
    with pytest.raises(ValueError, match="do not match"):
        head.loss(out, {"labels": torch.zeros(1, 16, 16, dtype=torch.long)})


def test_trains_at_batch_size_one() -> None:
    # the bin-1 pooling branch holds one value per channel: no BatchNorm there
    head = _head()
    head.train()
    out = head(_feats(1, (64, 64)), (64, 64))
    head.loss(out, {"labels": torch.zeros(1, 64, 64, dtype=torch.long)})["seg"].backward()


def test_average_is_mean_softmax() -> None:
    head = _head().eval()
    size = (32, 32)
    out1, out2 = head(_feats(2, size, seed=1), size), head(_feats(2, size, seed=2), size)
    same = head.average([out1, out1])
    torch.testing.assert_close(same["logits"].softmax(1), out1["logits"].softmax(1))
    assert torch.equal(head.predict(same), head.predict(out1))
    fused = head.average([out1, out2])
    mean = (out1["logits"].softmax(1) + out2["logits"].softmax(1)) / 2
    torch.testing.assert_close(fused["logits"].softmax(1), mean)
    torch.testing.assert_close(fused["logits"].exp().sum(1), torch.ones(2, *size))
