"""Inference-time fold of the image-level fusion stem: 4 input channels instead of 6.

A 6-channel student sees ``cat(visible, thermal, thermal, thermal)`` normalised with the
ImageNet statistics tiled twice (`md.models.norm`), then conv1 (7x7, stride 2, zero padding
3, no bias). Both steps are linear, and the three thermal channels are copies, so

    conv1(norm(x6)) = conv(W', cat(visible, thermal)) - B

with ``W'[:, :3] = W[:, :3] / std[:3]``, ``W'[:, 3] = sum_c W[:, 3 + c] / std[3 + c]`` and
``B = conv(W, mean / std)`` of a constant image, which zero padding makes a fixed map (uniform
inside, different within 3 pixels of the border), computed once per input size.

Why: conv1 is the only part of the image-level student that grows with the thermal input,
and its cost grows with its input channels: at 640x512 on one CPU thread the 6-channel
conv1 costs ~15 ms more than the 3-channel one, ~+6 % of the whole visible-only student;
folded to 4 channels the student costs +1-3 % (docs/benchmarks.md). Training keeps the
6-channel form (the paper's, and the pretrained-weight adaptation of `md.models.resnet`);
`fold_image_level` makes the deployable copy. Exact up to float rounding (tests).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md.errors import MdError
from md.models.norm import ImageNorm
from md.models.student import OneStreamStudent


class FoldedStem(nn.Module):
    """conv1 of a 6-channel (visible, thermal x3) input folded with the input normalisation:
    (B, 4, H, W) = cat(visible, thermal) in [0, 1] -> conv1(norm(cat(visible, thermal x3)))."""

    def __init__(self, conv1: nn.Conv2d, norm: ImageNorm) -> None:
        super().__init__()
        if conv1.in_channels != 6 or norm.in_channels != 6 or conv1.bias is not None:
            raise MdError("only a bias-free 6-channel conv1 after a 6-channel ImageNorm folds")
        w = conv1.weight.detach()
        mean = norm.mean.detach().view(1, 6, 1, 1).to(w)
        std = norm.std.detach().view(1, 6, 1, 1).to(w)
        scaled = w / std  # (C_out, 6, k, k): weights on the raw [0, 1] input
        folded = torch.cat([scaled[:, :3], scaled[:, 3:].sum(1, keepdim=True)], 1)
        self.conv = nn.Conv2d(
            4,
            conv1.out_channels,
            conv1.kernel_size,  # type: ignore[arg-type]
            stride=conv1.stride,  # type: ignore[arg-type]
            padding=conv1.padding,  # type: ignore[arg-type]
            bias=False,
        ).to(w)
        self.conv.weight.data.copy_(folded)
        self.offset: Tensor
        self.weight6: Tensor
        self.register_buffer("offset", (mean / std).view(1, 6, 1, 1), persistent=False)
        self.register_buffer("weight6", w.clone(), persistent=False)
        self._border: dict[tuple[object, ...], Tensor] = {}
        if not isinstance(conv1.padding, tuple):
            raise MdError(f"conv1 padding {conv1.padding!r} is not numeric; cannot fold")
        self._stride = tuple(conv1.stride)
        self._padding = tuple(conv1.padding)
        self._dilation = tuple(conv1.dilation)

    def border(self, height: int, width: int, like: Tensor) -> Tensor:
        """B for inputs of (height, width): conv1 of the constant normalised-zero image."""
        key = (height, width, like.device, like.dtype)
        if key not in self._border:
            with torch.no_grad():
                const = self.offset.expand(1, 6, height, width).to(self.weight6)
                b = F.conv2d(const, self.weight6, None, self._stride, self._padding, self._dilation)
            self._border[key] = b.to(device=like.device, dtype=like.dtype)
        return self._border[key]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 4:
            raise MdError(
                f"a folded image-level stem takes (B, 4, H, W) = cat(visible, thermal), "
                f"got {tuple(x.shape)}"
            )
        y = self.conv(x)
        return y - self.border(x.shape[-2], x.shape[-1], y)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        self._border = {}  # device / dtype moves recompute the map
        return super()._apply(fn, recurse)


def fold_image_level(model: OneStreamStudent) -> OneStreamStudent:
    """A copy of a 6-channel student that takes ``cat(visible, thermal)`` (B, 4, H, W) in
    [0, 1] and gives the same outputs as the original on ``cat(visible, thermal x3)``."""
    if not isinstance(model, OneStreamStudent) or model.norm.in_channels != 6:
        raise MdError("fold_image_level needs a 6-channel (visible + thermal) student")
    folded = copy.deepcopy(model)
    folded.trunk.conv1 = FoldedStem(model.trunk.conv1, model.norm)  # type: ignore[assignment]
    folded.norm = nn.Identity()  # type: ignore[assignment]
    return folded
