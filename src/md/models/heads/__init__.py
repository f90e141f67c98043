"""Task heads: RetinaNet-style pedestrian detection and PSPNet segmentation.

One way in: :func:`build_head`. Both heads share the interface of ``docs/internals.md``
("Heads"): ``forward(feats, image_size) -> outputs``, ``loss(outputs, targets) -> {name:
scalar}``, ``predict(outputs)`` and ``average(outputs_list)`` (decision-level fusion).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from md.models.heads.detection import DetectionHead
from md.models.heads.segmentation import SegmentationHead

TASKS = ("detection", "segmentation")

__all__ = ["TASKS", "DetectionHead", "SegmentationHead", "build_head"]


def build_head(task: str, in_channels: dict[str, int], **kwargs: Any) -> nn.Module:
    """Head for ``task`` ("detection" | "segmentation") over backbone levels ``in_channels``
    (e.g. ``{"c3": 128, "c4": 256, "c5": 512}``); kwargs go to the head's constructor
    (:class:`DetectionHead` or :class:`SegmentationHead`)."""
    if task == "detection":
        return DetectionHead(in_channels, **kwargs)
    if task == "segmentation":
        return SegmentationHead(in_channels, **kwargs)
    raise ValueError(f"unknown task {task!r}: expected one of {TASKS}")
