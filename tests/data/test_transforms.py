"""Thermal resolution, student input, joint flips and stride-aligned crops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from md.data.transforms import (
    crop_boxes,
    crop_sample,
    hflip_sample,
    random_aligned_crop_params,
    reduce_thermal,
    student_input,
)
from md.errors import ConfigError


def coordinate_map(height: int, width: int) -> torch.Tensor:
    """(1, H, W) map whose value at (y, x) is 1000 * y + x, so any cut can be read back."""
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    return (1000 * ys + xs)[None]


def box_sample() -> dict[str, Any]:
    """A 64x96 image that is 1 exactly inside its one box (x 10..30, y 20..50), else 0."""
    visible = torch.zeros(3, 64, 96)
    visible[:, 20:50, 10:30] = 1.0
    return {
        "visible": visible,
        "thermal": visible[:1].clone(),
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0]]),
        "box_ignore": torch.tensor([False]),
        "box_occlusion": torch.tensor([1]),
        "box_classes": ["person"],
    }


# --- reduce_thermal / student_input -----------------------------------------------------------


def test_factor_1_is_identity() -> None:
    thermal = torch.rand(2, 1, 32, 40)
    assert reduce_thermal(thermal, 1) is thermal


@pytest.mark.parametrize("batched", [True, False])
def test_factor_16_keeps_shape_and_matches_manual_interpolation(batched: bool) -> None:
    thermal = torch.rand(2, 1, 64, 80)
    low = F.interpolate(thermal, size=(16, 20), mode="bilinear", align_corners=False)
    manual = F.interpolate(low, size=(64, 80), mode="bilinear", align_corners=False)
    out = reduce_thermal(thermal if batched else thermal[0], 16)
    assert out.shape == (thermal if batched else thermal[0]).shape
    assert torch.allclose(out, manual if batched else manual[0])
    assert not torch.allclose(out, thermal if batched else thermal[0])  # detail is lost


def test_factor_4_downsample_is_a_2x2_mean() -> None:
    thermal = torch.rand(1, 1, 8, 8)
    low = F.interpolate(thermal, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(low, F.avg_pool2d(thermal, 2))
    assert reduce_thermal(thermal, 4).shape == thermal.shape


@pytest.mark.parametrize("factor", [0, 2, 8, 9, 32])
def test_other_factors_are_rejected(factor: int) -> None:
    with pytest.raises(ConfigError, match="1, 4, 16, 64"):
        reduce_thermal(torch.rand(1, 1, 8, 8), factor)


def test_student_input_channels() -> None:
    visible, thermal = torch.rand(2, 3, 16, 24), torch.rand(2, 1, 16, 24)
    x = student_input(visible, thermal)
    assert x.shape == (2, 6, 16, 24)
    assert torch.equal(x[:, :3], visible)
    for c in range(3, 6):
        assert torch.equal(x[:, c], thermal[:, 0])
    assert student_input(visible, None) is visible
    assert student_input(visible[0], thermal[0]).shape == (6, 16, 24)
    with pytest.raises(ValueError, match="does not match"):
        student_input(visible, thermal[:, :, :8])


# --- flips -------------------------------------------------------------------------------------


def test_flip_twice_is_identity() -> None:
    sample = box_sample()
    sample["labels"] = torch.randint(0, 9, (64, 96))
    sample["mask"] = torch.rand(1, 8, 12)
    twice = hflip_sample(hflip_sample(sample, ["mask"]), ["mask"])
    for key in ("visible", "thermal", "labels", "boxes", "mask", "box_ignore"):
        assert torch.equal(twice[key], sample[key]), key


def test_flipped_box_covers_the_flipped_content() -> None:
    flipped = hflip_sample(box_sample())
    x1, y1, x2, y2 = flipped["boxes"][0].int().tolist()
    assert (x1, y1, x2, y2) == (96 - 30, 20, 96 - 10, 50)
    image = flipped["visible"][0]
    assert image[y1:y2, x1:x2].eq(1).all() and image.sum() == (x2 - x1) * (y2 - y1)
    assert flipped["box_classes"] == ["person"]


def test_flip_a_batch_with_box_lists_and_level_dicts() -> None:
    batch: dict[str, Any] = {
        "visible": torch.rand(2, 3, 32, 64),
        "boxes": [torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)],
        "features": {"c3": torch.rand(2, 4, 4, 8), "c4": torch.rand(2, 4, 2, 4)},
    }
    out = hflip_sample(batch, ["features"])
    assert out["boxes"][0].tolist() == [[56.0, 0.0, 64.0, 8.0]] and out["boxes"][1].shape == (0, 4)
    assert torch.equal(out["features"]["c4"], batch["features"]["c4"].flip(-1))
    assert torch.equal(out["visible"], batch["visible"].flip(-1))


# --- crops -------------------------------------------------------------------------------------


def test_crop_must_be_aligned_and_inside() -> None:
    sample = {"visible": torch.rand(3, 128, 160)}
    with pytest.raises(ConfigError, match=r"\{'left': 8\} not a multiple of align=32"):
        crop_sample(sample, 0, 8, 64, 64)
    with pytest.raises(ConfigError, match="does not fit"):
        crop_sample(sample, 96, 0, 64, 64)
    assert crop_sample(sample, 32, 64, 64, 96)["visible"].shape == (3, 64, 96)


def test_crop_cuts_dense_maps_exactly_at_their_stride() -> None:
    image = coordinate_map(128, 160)
    sample = {
        "thermal": image,
        "labels": image[0].long(),
        "mask8": coordinate_map(16, 20),  # stride 8: value 1000 * (y / 8) + x / 8
        "features": {"c5": coordinate_map(4, 5)},  # stride 32
    }
    out = crop_sample(sample, 32, 64, 64, 96, dense_keys=["mask8", "features"])
    assert torch.equal(out["thermal"], image[:, 32:96, 64:160])
    assert out["labels"][0, 0] == 1000 * 32 + 64
    mask = out["mask8"]
    assert mask.shape == (1, 8, 12)
    assert mask[0, 0, 0] == 1000 * 4 + 8 and mask[0, -1, -1] == 1000 * 11 + 19
    assert out["features"]["c5"].shape == (1, 2, 3) and out["features"]["c5"][0, 0, 0] == 1002
    with pytest.raises(ValueError, match="stride"):  # stride 64 does not divide align 32
        crop_sample({"thermal": image, "m": coordinate_map(2, 2)}, 0, 0, 64, 64, dense_keys=["m"])


def test_crop_boxes_shift_clip_drop_and_ignore() -> None:
    boxes = torch.tensor(
        [
            [40.0, 40.0, 60.0, 60.0],  # inside the window
            [20.0, 40.0, 40.0, 60.0],  # 3/4 left of the window: keeps 1/4 -> ignored
            [0.0, 0.0, 10.0, 10.0],  # outside: dropped
            [28.0, 40.0, 44.0, 60.0],  # keeps 12/16 of its width -> kept, not ignored
        ]
    )
    sample = {
        "visible": torch.rand(3, 128, 128),
        "boxes": boxes,
        "box_ignore": torch.tensor([False, False, False, False]),
        "box_occlusion": torch.tensor([0, 1, 2, 0]),
        "box_classes": ["person", "people", "cyclist", "person"],
    }
    out = crop_sample(sample, 32, 32, 64, 64)
    assert out["boxes"].tolist() == [
        [8.0, 8.0, 28.0, 28.0],
        [0.0, 8.0, 8.0, 28.0],
        [0.0, 8.0, 12.0, 28.0],
    ]
    assert out["box_ignore"].tolist() == [False, True, False]
    assert out["box_occlusion"].tolist() == [0, 1, 0]
    assert out["box_classes"] == ["person", "people", "person"]
    _, keep, low = crop_boxes(boxes, 32, 32, 64, 64)
    assert keep.tolist() == [True, True, False, True] and low.tolist() == [False, True, True, False]


def test_crop_a_batch_keeps_per_image_box_lists() -> None:
    batch = {
        "visible": torch.rand(2, 3, 64, 64),
        "boxes": [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[40.0, 40.0, 60.0, 60.0]])],
        "box_ignore": [torch.tensor([False]), torch.tensor([False])],
    }
    out = crop_sample(batch, 32, 32, 32, 32)
    assert out["visible"].shape == (2, 3, 32, 32)
    assert [b.tolist() for b in out["boxes"]] == [[], [[8.0, 8.0, 28.0, 28.0]]]
    assert [i.tolist() for i in out["box_ignore"]] == [[], [False]]


def test_random_crop_params_are_aligned_inside_and_seeded() -> None:
    draws = set()
    for seed in range(40):
        params = random_aligned_crop_params(
            512, 640, 256, 320, 32, torch.Generator().manual_seed(seed)
        )
        top, left, h, w = params
        assert top % 32 == 0 and left % 32 == 0 and (h, w) == (256, 320)
        assert top + h <= 512 and left + w <= 640
        draws.add((top, left))
    assert len(draws) > 10
    again = random_aligned_crop_params(512, 640, 256, 320, 32, torch.Generator().manual_seed(3))
    assert again == random_aligned_crop_params(
        512, 640, 256, 320, 32, torch.Generator().manual_seed(3)
    )
    assert random_aligned_crop_params(64, 64, 64, 64) == (0, 0, 64, 64)
    with pytest.raises(ConfigError):
        random_aligned_crop_params(64, 64, 48, 64)
