"""The folded image-level stem (md.models.fold) gives the 6-channel student's outputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_leaves

from md.errors import MdError
from md.models import build_model
from md.models.fold import FoldedStem, fold_image_level
from md.train.teacher import head_kwargs


def _student(task: str, in_channels: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "student",
        task,
        in_channels=in_channels,
        width=0.25,
        num_classes=9 if task == "segmentation" else 1,
        head_kwargs=head_kwargs(task, 16),
        head_input="trunk",
    )
    # Non-trivial BN statistics, so the fold is checked through a realistic stem.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("size", [(64, 80), (37, 53)])  # an odd size: border map per size
def test_folded_student_equals_the_six_channel_student(task, size):
    model = _student(task)
    folded = fold_image_level(model)
    g = torch.Generator().manual_seed(1)
    visible = torch.rand(2, 3, *size, generator=g)
    thermal = torch.rand(2, 1, *size, generator=g)
    with torch.inference_mode():
        ref = model(torch.cat([visible, thermal, thermal, thermal], 1))
        got = folded(torch.cat([visible, thermal], 1))
        six = torch.cat([visible, thermal.expand(-1, 3, -1, -1)], 1)
        stem_ref = model.trunk.conv1(model.norm(six))
        stem_got = folded.trunk.conv1(torch.cat([visible, thermal], 1))
    # The stem itself: exact up to float rounding, borders included.
    scale = stem_ref.abs().max()
    assert (stem_got - stem_ref).abs().max() <= 1e-5 * scale
    leaves = zip(tree_leaves(got["pred"]), tree_leaves(ref["pred"]), strict=True)
    tensors = 0
    for a, b in leaves:
        if isinstance(b, torch.Tensor):
            tensors += 1
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-6)
        else:
            assert a == b
    assert tensors > 0
    assert folded.trunk.conv1.conv.in_channels == 4


def test_the_original_is_untouched_and_bad_inputs_are_refused():
    model = _student("detection")
    before = model.trunk.conv1.weight.clone()
    folded = fold_image_level(model)
    assert torch.equal(model.trunk.conv1.weight, before)
    assert model.trunk.conv1.in_channels == 6
    with pytest.raises(MdError, match=r"\(B, 4, H, W\)"):
        folded(torch.rand(1, 6, 32, 32))
    with pytest.raises(MdError, match="6-channel"):
        fold_image_level(_student("detection", in_channels=3))
    with pytest.raises(MdError, match="6-channel"):
        FoldedStem(torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False), model.norm)
