"""Input normalisation applied inside every model.

All models take images in [0, 1] (docs/internals.md) and normalise with the ImageNet
mean/std, the statistics the pretrained trunk was trained with. The thermal image is a
single channel: it is duplicated to 3 channels first, so both modalities go through the
same RGB statistics and the same pretrained conv1 (MD §4.2 duplicates thermal to 3
channels "to balance the contribution of visible and thermal spectrum"). A 6-channel
student input (visible, thermal×3) gets the statistics tiled twice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from md.errors import MdError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageNorm(nn.Module):
    """(B, C_in, H, W) in [0, 1] -> normalised (B, C_out, H, W).

    ``in_channels`` 1 (thermal; duplicated, C_out = 3), 3 (C_out = 3) or 6 (C_out = 6).
    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of
    ``state_dict``, so checkpoints hold only learned weights.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3, 6):
            raise MdError(f"input must have 1, 3 or 6 channels, got {in_channels}")
        self.in_channels = in_channels
        self.out_channels = 3 if in_channels == 1 else in_channels
        repeats = self.out_channels // 3
        mean = torch.tensor(IMAGENET_MEAN * repeats).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD * repeats).view(1, -1, 1, 1)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise MdError(
                f"expected a (B, {self.in_channels}, H, W) image batch, got {tuple(x.shape)}"
            )
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
