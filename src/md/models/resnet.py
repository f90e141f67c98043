"""ResNet-18 trunk in plain torch, with torchvision-compatible ``state_dict`` keys.

The CPU machines have no torchvision, yet users bring torchvision ``resnet18`` ImageNet
weight files (``--pretrained PATH``). The module tree therefore mirrors torchvision exactly
(``conv1``, ``bn1``, ``layer1..layer4`` of ``BasicBlock``s with ``conv1, bn1, conv2, bn2,
downsample.0, downsample.1``) minus the classifier ``fc``, which :func:`load_pretrained`
skips.

``forward`` returns the three pyramid levels the fusion and the heads use:
``c3`` (stride 8, layer2), ``c4`` (stride 16, layer3), ``c5`` (stride 32, layer4).

A ``width`` multiplier scales every channel count (``64·w, 128·w, 256·w, 512·w``, at
least 8 each) for tiny CPU configurations; pretrained weights exist only for ``width=1``.

Input normalisation is *not* part of the trunk (see :mod:`md.models.norm`), so the trunk
holds exactly the torchvision parameters and buffers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from md.errors import MdError

LEVELS: tuple[str, ...] = ("c3", "c4", "c5")
STRIDES: dict[str, int] = {"c3": 8, "c4": 16, "c5": 32}
_BASE_CHANNELS: tuple[int, ...] = (64, 128, 256, 512)  # layer1..layer4 at width 1
# Level channels at width 1 (layer2..layer4): a store's channel counts give the teacher's width.
LEVEL_BASE_CHANNELS: dict[str, int] = dict(zip(LEVELS, _BASE_CHANNELS[1:], strict=True))
_MIN_CHANNELS = 8


def scaled_channels(base: int, width: float) -> int:
    """Channel count ``base·width`` rounded, never below 8 (BatchNorm needs a few)."""
    if width <= 0:
        raise MdError(f"ResNet18 width must be > 0, got {width}")
    return max(_MIN_CHANNELS, round(base * width))


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv3x3-bn-relu-conv3x3-bn + shortcut, relu.

    ``downsample`` (1x1 conv + bn) exists only when stride or width change, as in
    torchvision, so that state_dict keys match.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_layer(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Two BasicBlocks (ResNet-18); the first one carries the stride."""
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


class ResNet18(nn.Module):
    """ResNet-18 feature extractor returning ``{"c3", "c4", "c5"}``.

    Args:
        in_channels: input channels (3 for one modality, 6 for the image-level fusion).
        width: channel multiplier; 1.0 is the standard (pretrainable) network.

    Attributes:
        out_channels: ``{"c3": 128·w, "c4": 256·w, "c5": 512·w}``.
        strides: ``{"c3": 8, "c4": 16, "c5": 32}``.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        c1, c2, c3, c4 = (scaled_channels(c, width) for c in _BASE_CHANNELS)
        self.conv1 = nn.Conv2d(in_channels, c1, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _make_layer(c1, c1, 1)
        self.layer2 = _make_layer(c1, c2, 2)
        self.layer3 = _make_layer(c2, c3, 2)
        self.layer4 = _make_layer(c3, c4, 2)
        self.out_channels: dict[str, int] = {"c3": c2, "c4": c3, "c5": c4}
        self.strides: dict[str, int] = dict(STRIDES)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init: Kaiming-normal convs (fan_out), BN weight 1 / bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, in_channels, H, W), already normalised -> {"c3": (B, 128w, H/8, W/8),
        "c4": (B, 256w, H/16, W/16), "c5": (B, 512w, H/32, W/32)} (sizes rounded up)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64w, H/4, W/4)
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c3": c3, "c4": c4, "c5": c5}


def adapt_conv1_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt ImageNet conv1 weights (64, 3, 7, 7) to ``in_channels`` inputs.

    - 3: unchanged.
    - 6: the 3-channel kernel duplicated along the input dim and halved (MD footnote 3), so
      a 6-channel input cat(x, x) gives exactly the 3-channel response to x.
    - 1: summed over the input dim (a grey image replicated to RGB gives the same response).
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise MdError(f"conv1 weight must be (C, 3, k, k), got {tuple(weight.shape)}")
    if in_channels == 3:
        return weight.clone()
    if in_channels == 6:
        return torch.cat([weight, weight], dim=1) / 2
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise MdError(
        f"cannot adapt 3-channel pretrained conv1 to {in_channels} input channels "
        "(supported: 1, 3, 6)"
    )


def _read_state_dict(source: str | Path | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Load a state dict from a file (weights only) or take a mapping; also return its name."""
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    path = Path(source)
    if not path.is_file():
        raise MdError(f"{path}: pretrained weight file not found; pass a torchvision resnet18 .pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling / format problem is the user's file
        raise MdError(
            f"{path}: cannot read as a weights-only torch state dict ({type(e).__name__}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from e
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MdError(f"{path}: not a state dict of tensors; save model.state_dict()")
    return dict(state), str(path)


def load_pretrained(model: ResNet18, source: str | Path | Mapping[str, Tensor]) -> None:
    """Load torchvision ``resnet18`` ImageNet weights into ``model`` (in place).

    ``source`` is a file written by ``torch.save(resnet18.state_dict(), path)`` or such a
    mapping. ``fc.*`` is ignored; conv1 is adapted to ``model.in_channels`` with
    :func:`adapt_conv1_weight`. Files from torchvision < 0.4 lack ``num_batches_tracked``,
    which is then kept as is. Any other missing, extra or mis-shaped key is an ``MdError``
    naming the file.
    """
    state, name = _read_state_dict(source)
    if model.width != 1.0:
        raise MdError(
            f"{name}: pretrained ImageNet weights need width=1.0, the model has width={model.width}"
        )
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_conv1_weight(state["conv1.weight"], model.in_channels)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise MdError(
            f"{name}: not a torchvision resnet18 state dict (missing keys {missing[:3]}, "
            f"unexpected keys {extra[:3]})"
        )
    bad = [
        f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise MdError(f"{name}: mis-shaped resnet18 weights: {'; '.join(bad[:3])}")
    model.load_state_dict(state, strict=False)
