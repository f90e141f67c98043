"""Two-stream GAFF teacher (MD Fig. 1(A), upper model; the "feature-level" baseline).

Two ResNet-18 trunks, ``visible`` and ``thermal`` (3 channels each: the 1-channel thermal
image is duplicated, then both get ImageNet normalisation), a :class:`~md.models.gaff.GAFF`
module at each level in ``levels`` and one task head over c3, c4, c5. A level not in
``levels`` still feeds the head, fused by plain averaging ``(f_vis + f_th) / 2`` (no masks,
nothing to distil there), so the head always sees the full pyramid.

``forward`` returns the distillation targets at the GAFF levels (``features``: fused
features, ``masks``: teacher masks, eq. 2-3) plus the raw GAFF outputs and the head outputs.
``loss`` adds the GAFF supervision (intra Dice/BCE, guided inter CE; mean over levels) to the
head's loss parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from md.errors import MdError
from md.models.gaff import GAFF, GAFFLoss, foreground_from_boxes, foreground_from_labels
from md.models.norm import ImageNorm
from md.models.resnet import LEVELS, ResNet18, load_pretrained
from md.models.shared import (
    build_task_head,
    check_levels,
    check_task,
    head_targets,
    weighted_total,
)

SEG_FOREGROUNDS = ("fraction", "any")


class TwoStreamTeacher(nn.Module):
    """Two-stream ResNet-18 + GAFF + task head.

    Args:
        task: "detection" or "segmentation".
        width: trunk width multiplier (1.0 for the paper / pretrained weights).
        levels: levels fused by GAFF and exported as distillation targets.
        num_classes: segmentation classes (MFNet: 9 incl. unlabeled).
        head_kwargs: extra keyword arguments for ``build_head``.
        gaff_kwargs: keyword arguments for :class:`GAFFLoss` (``intra_loss``, ``tie_margin``).
        pretrained: torchvision resnet18 weight file, loaded into both trunks.
        loss_weights: weight per loss part name (head parts, "gaff_intra", "gaff_inter");
            unnamed parts weigh 1.
        seg_foreground: segmentation mask target per feature cell, "fraction" (the
            non-background fraction, soft) or "any" (1 where any pixel is non-background).
    """

    def __init__(
        self,
        task: str = "detection",
        width: float = 1.0,
        levels: Sequence[str] = LEVELS,
        num_classes: int = 9,
        head_kwargs: Mapping[str, Any] | None = None,
        gaff_kwargs: Mapping[str, Any] | None = None,
        pretrained: str | Path | None = None,
        loss_weights: Mapping[str, float] | None = None,
        seg_foreground: str = "fraction",
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        if seg_foreground not in SEG_FOREGROUNDS:
            raise MdError(
                f"seg_foreground must be one of {SEG_FOREGROUNDS}, got {seg_foreground!r}"
            )
        self.seg_foreground = seg_foreground
        self.levels = check_levels(levels, allow_empty=False)
        self.norm_visible, self.norm_thermal = ImageNorm(3), ImageNorm(1)
        self.visible, self.thermal = ResNet18(3, width), ResNet18(3, width)
        if pretrained is not None:
            load_pretrained(self.visible, pretrained)
            load_pretrained(self.thermal, pretrained)
        trunk_channels = self.visible.out_channels
        self.gaff = nn.ModuleDict({lv: GAFF(trunk_channels[lv]) for lv in self.levels})
        self.gaff_loss = GAFFLoss(**dict(gaff_kwargs or {}))
        self.head = build_task_head(task, trunk_channels, num_classes, head_kwargs)
        self.loss_weights = dict(loss_weights or {})
        # What a store writer needs to describe the exported targets.
        self.out_channels = {lv: trunk_channels[lv] for lv in self.levels}
        self.strides = {lv: self.visible.strides[lv] for lv in self.levels}

    def forward(self, visible: Tensor, thermal: Tensor) -> dict[str, Any]:
        """visible (B, 3, H, W), thermal (B, 1, H, W), both in [0, 1] ->
        {"features": {L: fused (B, C_L, H_L, W_L)}, "masks": {L: (B, 1, H_L, W_L)},
        "gaff": {L: GAFF outputs}, "pred": head outputs}; L over ``self.levels``."""
        out = self.forward_features(visible, thermal)
        pyramid = out.pop("pyramid")
        out["pred"] = self.head(pyramid, tuple(visible.shape[-2:]))
        return out

    def forward_features(self, visible: Tensor, thermal: Tensor) -> dict[str, Any]:
        """Everything but the head (what the teacher cache stores): "features", "masks",
        "gaff" as in ``forward``, plus "pyramid" {c3, c4, c5}, the head's input."""
        if visible.shape[-2:] != thermal.shape[-2:] or visible.shape[0] != thermal.shape[0]:
            raise MdError(
                f"visible {tuple(visible.shape)} and thermal {tuple(thermal.shape)} batches differ "
                "in size; the teacher needs aligned full-resolution pairs"
            )
        f_vis = self.visible(self.norm_visible(visible))
        f_th = self.thermal(self.norm_thermal(thermal))
        gaff_out = {lv: self.gaff[lv](f_vis[lv], f_th[lv]) for lv in self.levels}
        pyramid = {
            lv: gaff_out[lv]["fused"] if lv in gaff_out else (f_vis[lv] + f_th[lv]) / 2
            for lv in LEVELS
        }
        return {
            "features": {lv: g["fused"] for lv, g in gaff_out.items()},
            "masks": {lv: g["teacher_mask"] for lv, g in gaff_out.items()},
            "gaff": gaff_out,
            "pyramid": pyramid,
        }

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Named loss parts: the head's (e.g. "cls", "box" / "seg"), "gaff_intra",
        "gaff_inter" (each the mean over GAFF levels) and "total" (weighted sum).

        ``batch``: the collated dataset items; detection needs "visible" (for the image
        size), "boxes" and "box_ignore"; segmentation needs "labels" (B, H, W).
        """
        parts = dict(self.head.loss(outputs["pred"], head_targets(self.task, batch)))
        intra, inter = [], []
        for g in outputs["gaff"].values():
            fg = self.foreground(batch, tuple(g["intra_vis"].shape[-2:])).to(g["intra_vis"].device)
            level_loss = self.gaff_loss(g["intra_vis"], g["intra_th"], g["inter"], fg)
            intra.append(level_loss["intra"])
            inter.append(level_loss["inter"])
        parts["gaff_intra"] = torch.stack(intra).mean()
        parts["gaff_inter"] = torch.stack(inter).mean()
        parts["total"] = weighted_total(parts, self.loss_weights)
        return parts

    def foreground(self, batch: Mapping[str, Any], out_size: tuple[int, ...]) -> Tensor:
        """Ground-truth foreground (B, 1, h, w) at a feature size: ellipses in the non-ignored
        boxes (detection) or, for segmentation, the non-background fraction of each cell
        (``seg_foreground="fraction"``) or 1 where it holds any non-background pixel
        ("any": binary, as the detection ellipses are)."""
        size = (int(out_size[0]), int(out_size[1]))
        if self.task == "segmentation":
            fraction = foreground_from_labels(head_targets(self.task, batch)["labels"], size)
            return fraction if self.seg_foreground == "fraction" else (fraction > 0).float()
        if "visible" not in batch:
            raise MdError("detection batch lacks 'visible'; the GAFF targets need the image size")
        image_size = (int(batch["visible"].shape[-2]), int(batch["visible"].shape[-1]))
        targets = head_targets(self.task, batch)
        return foreground_from_boxes(targets["boxes"], image_size, size, targets["box_ignore"])
