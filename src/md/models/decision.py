"""Decision-level fusion baseline (MD Tables 1-2): average of per-modality predictions.

Two independent networks, ``visible`` and ``thermal`` (each: ImageNet normalisation,
ResNet-18 trunk, own task head; thermal duplicated to 3 channels). Their outputs are
averaged in probability space by the head's ``average`` ("For simplicity, we average the
prediction from visible and thermal images", MD §4.3). Both branches are trained jointly,
each with its own task loss on the same targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from md.errors import MdError
from md.models.norm import ImageNorm
from md.models.resnet import ResNet18, load_pretrained
from md.models.shared import build_task_head, check_task, head_targets, weighted_total


class SingleModalityNet(nn.Module):
    """Normalisation + trunk + head for one modality image (B, in_channels, H, W) in [0, 1]."""

    def __init__(
        self,
        task: str,
        in_channels: int,
        width: float,
        num_classes: int,
        head_kwargs: Mapping[str, Any] | None,
        pretrained: str | Path | None,
    ) -> None:
        super().__init__()
        self.norm = ImageNorm(in_channels)
        self.trunk = ResNet18(self.norm.out_channels, width)
        if pretrained is not None:
            load_pretrained(self.trunk, pretrained)
        self.head = build_task_head(task, self.trunk.out_channels, num_classes, head_kwargs)

    def forward(self, image: Tensor) -> Any:
        """image (B, in_channels, H, W) -> head outputs."""
        return self.head(self.trunk(self.norm(image)), tuple(image.shape[-2:]))


class DecisionLevel(nn.Module):
    """Visible and thermal networks whose predictions are averaged.

    Args:
        task, width, num_classes, head_kwargs, pretrained: as for the teacher.
        loss_weights: weight per loss part name ("visible_cls", "thermal_seg", ...).
    """

    def __init__(
        self,
        task: str = "detection",
        width: float = 1.0,
        num_classes: int = 9,
        head_kwargs: Mapping[str, Any] | None = None,
        pretrained: str | Path | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        self.visible = SingleModalityNet(task, 3, width, num_classes, head_kwargs, pretrained)
        self.thermal = SingleModalityNet(task, 1, width, num_classes, head_kwargs, pretrained)
        self.loss_weights = dict(loss_weights or {})

    def forward(self, visible: Tensor, thermal: Tensor) -> dict[str, Any]:
        """visible (B, 3, H, W), thermal (B, 1, H, W) in [0, 1] ->
        {"pred": averaged head outputs, "pred_visible", "pred_thermal"}."""
        if visible.shape[-2:] != thermal.shape[-2:] or visible.shape[0] != thermal.shape[0]:
            raise MdError(
                f"visible {tuple(visible.shape)} and thermal {tuple(thermal.shape)} batches differ "
                "in size; decision-level fusion needs aligned pairs"
            )
        pred_visible = self.visible(visible)
        pred_thermal = self.thermal(thermal)
        pred = self.visible.head.average([pred_visible, pred_thermal])
        return {"pred": pred, "pred_visible": pred_visible, "pred_thermal": pred_thermal}

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Both branches' task loss parts, prefixed ("visible_cls", "thermal_box", ...),
        and "total" (weighted sum)."""
        targets = head_targets(self.task, batch)
        parts: dict[str, Tensor] = {}
        for name, net in (("visible", self.visible), ("thermal", self.thermal)):
            for part, value in net.head.loss(outputs[f"pred_{name}"], targets).items():
                parts[f"{name}_{part}"] = value
        parts["total"] = weighted_total(parts, self.loss_weights)
        return parts
