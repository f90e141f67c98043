"""One-stream student (MD Fig. 1(A), lower model; also the image-level / visible-only baselines).

One ResNet-18 trunk on the image-level fusion ``x = cat(visible, thermal×3)`` (6 channels;
conv1 adapted from ImageNet by duplication and halving) or on visible alone (3 channels).
At each distilled level L (``levels``) two side modules read the trunk feature ``f``:

- ``attention_transfer[L]``: 1×1 conv + sigmoid -> ``m_student`` (B, 1, H, W) (MD eq. 3),
  matched to the teacher mask with Dice by the student trainer;
- ``semantic_transfer[L]``: a basic residual block (conv3x3-bn-relu-conv3x3-bn + identity,
  relu) whose output ``s`` is matched to the teacher's fused features (F-MSE, eq. 4).
  Its last BN scale starts at 0, so ``s = f`` at initialisation (``f`` is post-ReLU) and the
  block only learns the correction the teacher asks for.

How these feed the task head is not stated in the paper; ``head_input`` chooses:

- ``"attended"`` (default): ``s ⊗ (1 + m_student)``. GAFF weights each stream by
  ``(1 + m)`` and the teacher mask is the combination of those masks, so this is the
  one-stream simulation of the attentive fusion that attention transfer aims at; the head
  sees features shaped by both distillation branches.
- ``"transfer"``: ``s`` (semantic transfer only on the head path, the mask a side output).
- ``"trunk"``: ``f`` (both branches are side heads; distillation acts only through the
  shared trunk).

Levels that are not distilled pass the trunk feature unchanged. Distillation losses live
in ``md.student_train``; ``loss`` here is the task loss only.

With ``"trunk"`` the side modules are training-only: in eval mode ``forward`` skips them
(``features`` and ``masks`` come back empty unless ``side_outputs=True``), so the deployed
student costs exactly the image-level network, the paper's runtime column (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from md.errors import MdError
from md.models.norm import ImageNorm
from md.models.resnet import LEVELS, BasicBlock, ResNet18, load_pretrained
from md.models.shared import (
    build_task_head,
    check_levels,
    check_task,
    head_targets,
    weighted_total,
)

HEAD_INPUTS: tuple[str, ...] = ("attended", "transfer", "trunk")


class AttentionTransfer(nn.Module):
    """Student attention mask: f (B, C, H, W) -> sigmoid(conv1x1(f)) (B, 1, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, f: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1, H, W) in (0, 1)."""
        return self.conv(f).sigmoid()


def semantic_transfer_block(channels: int) -> BasicBlock:
    """Basic residual block C -> C whose residual branch starts at zero (see module doc)."""
    block = BasicBlock(channels, channels)
    nn.init.zeros_(block.bn2.weight)
    return block


class OneStreamStudent(nn.Module):
    """One-stream ResNet-18 + attention/semantic transfer modules + task head.

    Args:
        task: "detection" or "segmentation".
        in_channels: 6 (visible + thermal×3) or 3 (visible only).
        width: trunk width multiplier; must equal the teacher's for feature matching.
        levels: distilled levels (may be empty: the plain image-level baseline).
        head_input: "attended" | "transfer" | "trunk" (see module docstring).
        num_classes: segmentation classes.
        head_kwargs: extra keyword arguments for ``build_head``.
        pretrained: torchvision resnet18 weight file (conv1 adapted to ``in_channels``).
        loss_weights: weight per head loss part; unnamed parts weigh 1.
    """

    def __init__(
        self,
        task: str = "detection",
        in_channels: int = 6,
        width: float = 1.0,
        levels: Sequence[str] = LEVELS,
        head_input: str = "attended",
        num_classes: int = 9,
        head_kwargs: Mapping[str, Any] | None = None,
        pretrained: str | Path | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        if in_channels not in (3, 6):
            raise MdError(
                f"student in_channels must be 6 (visible+thermal) or 3, got {in_channels}"
            )
        if head_input not in HEAD_INPUTS:
            raise MdError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}")
        self.levels = check_levels(levels, allow_empty=True)
        self.head_input = head_input
        self.norm = ImageNorm(in_channels)
        self.trunk = ResNet18(in_channels, width)
        if pretrained is not None:
            load_pretrained(self.trunk, pretrained)
        ch = self.trunk.out_channels
        self.attention_transfer = nn.ModuleDict(
            {lv: AttentionTransfer(ch[lv]) for lv in self.levels}
        )
        self.semantic_transfer = nn.ModuleDict(
            {lv: semantic_transfer_block(ch[lv]) for lv in self.levels}
        )
        self.head = build_task_head(task, ch, num_classes, head_kwargs)
        self.loss_weights = dict(loss_weights or {})
        self.out_channels = {lv: ch[lv] for lv in self.levels}
        self.strides = {lv: self.trunk.strides[lv] for lv in self.levels}

    def forward(self, x: Tensor, side_outputs: bool | None = None) -> dict[str, Any]:
        """x (B, 6 or 3, H, W) in [0, 1] -> {"features": {L: semantic-transfer output
        (B, C_L, H_L, W_L)}, "masks": {L: m_student (B, 1, H_L, W_L)}, "pred": head outputs}.

        ``side_outputs``: compute features/masks; by default always, except in eval mode with
        ``head_input="trunk"``, where the head does not need them.
        """
        if side_outputs is None:
            side_outputs = self.training or self.head_input != "trunk"
        f = self.trunk(self.norm(x))
        features: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        head_in = dict(f)
        for lv in self.levels if side_outputs else ():
            features[lv] = self.semantic_transfer[lv](f[lv])
            masks[lv] = self.attention_transfer[lv](f[lv])
            if self.head_input == "attended":
                head_in[lv] = features[lv] * (1 + masks[lv])
            elif self.head_input == "transfer":
                head_in[lv] = features[lv]
        pred = self.head(head_in, tuple(x.shape[-2:]))
        return {"features": features, "masks": masks, "pred": pred}

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Task loss parts of the head (e.g. "cls", "box" / "seg") and "total" (weighted sum).

        ``batch``: detection "boxes", "box_ignore"; segmentation "labels" (B, H, W).
        """
        parts = dict(self.head.loss(outputs["pred"], head_targets(self.task, batch)))
        parts["total"] = weighted_total(parts, self.loss_weights)
        return parts
