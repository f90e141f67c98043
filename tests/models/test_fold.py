"""The folded image-level stem (md.models.fold) gives the 6-channel student's outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

from md.errors import MdError
from md.models import build_model, head_kwargs, num_classes
from md.models.fold import FoldedStem, fold_image_level
from tests.fp import gamma


def _student(task: str, in_channels: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "student",
        task,
        in_channels=in_channels,
        width=0.25,
        num_classes=num_classes(task),
        head_kwargs=head_kwargs(task, 16),
        head_input="trunk",
    )
    # Non-trivial BN statistics, so the fold is checked through a realistic stem.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _stem_error_scale(model: torch.nn.Module, six: torch.Tensor) -> torch.Tensor:
    """A = conv(|W| / std, x6) + conv(|W|, mean / std) in float64: sum|terms| of conv1(norm(x6))
    (x6 >= 0), of the folded conv and of its border map alike."""
    conv, norm = model.trunk.conv1, model.norm
    w = conv.weight.detach().double().abs()
    mean, std = norm.mean.double(), norm.std.double()
    offset = (mean / std).expand(1, 6, *six.shape[-2:])
    args = (None, conv.stride, conv.padding, conv.dilation)
    return F.conv2d(six.double(), w / std.view(1, 6, 1, 1), *args) + F.conv2d(offset, w, *args)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("size", [(64, 80), (37, 53)])  # an odd size: border map per size
def test_folded_student_equals_the_six_channel_student(task, size):
    """The fold is an identity of real arithmetic, so it is checked where rounding cannot hide
    a mistake: the whole student in float64, and the float32 stem against the a-priori bound
    of float32 sums (any order, so on any CPU)."""
    model = _student(task)
    folded = fold_image_level(model)
    g = torch.Generator().manual_seed(1)
    visible = torch.rand(2, 3, *size, generator=g)
    thermal = torch.rand(2, 1, *size, generator=g)
    four = torch.cat([visible, thermal], 1)
    six = torch.cat([visible, thermal.expand(-1, 3, -1, -1)], 1)
    with torch.inference_mode():
        stem_ref = model.trunk.conv1(model.norm(six))
        stem_got = folded.trunk.conv1(four)
        model64 = copy.deepcopy(model).double()
        ref = model64(six.double())
        got = fold_image_level(model64)(four.double())
    # float32 stem: conv1(norm(x6)) is a sum of n = 6 * 49 products of normalised inputs (2
    # roundings each); the fold rounds its weights (<= 3 divisions + 2 additions), sums
    # 4 * 49 products, subtracts a border map of 294 products: each side errs by at most
    # gamma_300 * A elementwise, A = sum|terms| (`_stem_error_scale`). Bound: gamma_600 * A.
    bound = gamma(600) * _stem_error_scale(model, six)
    excess = float(((stem_got.double() - stem_ref.double()).abs() / bound).max())
    assert excess <= 1, f"stem differs by {excess:.3g}x the float32 bound"  # measured 3e-3
    # float64 student: its sums have n <= 9 * 128 < 2^11 terms, gamma_n <= 2^11 u of sum|terms|
    # each, over ~20 layers (2^5): 2^16 u64 = 2^-37 of the output scale; we allow 2^-36.
    # Measured 3e-15 (2^-48); float32 differs from float64 by 1e-6 (2^-20) here.
    leaves = zip(tree_leaves(got["pred"]), tree_leaves(ref["pred"]), strict=True)
    tensors = 0
    for a, b in leaves:
        if isinstance(b, torch.Tensor):
            tensors += 1
            assert a.dtype == b.dtype and a.shape == b.shape
            diff, scale = float((a - b).abs().max()), float(b.abs().max())
            assert diff <= 2.0**-36 * scale, (diff, scale)
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
