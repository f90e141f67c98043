"""md.models: ResNet-18 trunk, GAFF fusion, the MD teacher / student and the baselines.

``build_model(kind, task, **kwargs)`` is the one way in for configs and the CLI:

- "teacher": :class:`TwoStreamTeacher` (two-stream + GAFF; the feature-level baseline);
- "student": :class:`OneStreamStudent` (6-channel image-level fusion, or 3-channel
  visible-only with ``in_channels=3``);
- "decision": :class:`DecisionLevel` (average of per-modality predictions).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from md.errors import MdError
from md.models.decision import DecisionLevel
from md.models.gaff import GAFF, GAFFLoss, foreground_from_boxes, foreground_from_labels
from md.models.norm import ImageNorm
from md.models.resnet import ResNet18, adapt_conv1_weight, load_pretrained
from md.models.student import OneStreamStudent
from md.models.teacher import TwoStreamTeacher

MODEL_KINDS: dict[str, type[nn.Module]] = {
    "teacher": TwoStreamTeacher,
    "student": OneStreamStudent,
    "decision": DecisionLevel,
}


def build_model(kind: str, task: str, **kwargs: Any) -> nn.Module:
    """Build a model by kind ("teacher" | "student" | "decision") for ``task``.

    ``kwargs`` go to the class constructor (width, levels, num_classes, head_kwargs, ...).
    """
    if kind not in MODEL_KINDS:
        raise MdError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    return MODEL_KINDS[kind](task=task, **kwargs)


__all__ = [
    "GAFF",
    "MODEL_KINDS",
    "DecisionLevel",
    "GAFFLoss",
    "ImageNorm",
    "OneStreamStudent",
    "ResNet18",
    "TwoStreamTeacher",
    "adapt_conv1_weight",
    "build_model",
    "foreground_from_boxes",
    "foreground_from_labels",
    "load_pretrained",
]
