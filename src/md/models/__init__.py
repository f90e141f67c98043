"""md.models: ResNet-18 trunk, GAFF fusion, the MD teacher / student and the baselines.

``build_model(kind, task, **kwargs)`` (`md.models.factory`, with ``model_args`` and
``load_model``) is the one way in for configs, checkpoints and the CLI:

- "teacher": :class:`TwoStreamTeacher` (two-stream + GAFF; the feature-level baseline);
- "student": :class:`OneStreamStudent` (6-channel image-level fusion, or 3-channel
  visible-only with ``in_channels=3``);
- "decision": :class:`DecisionLevel` (average of per-modality predictions).
"""

from md.models.decision import DecisionLevel
from md.models.factory import (
    MODEL_KINDS,
    build_model,
    head_kwargs,
    load_model,
    model_args,
    num_classes,
)
from md.models.gaff import GAFF, GAFFLoss, foreground_from_boxes, foreground_from_labels
from md.models.norm import ImageNorm
from md.models.resnet import LEVEL_BASE_CHANNELS, ResNet18, adapt_conv1_weight, load_pretrained
from md.models.student import OneStreamStudent
from md.models.teacher import TwoStreamTeacher

__all__ = [
    "GAFF",
    "LEVEL_BASE_CHANNELS",
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
    "head_kwargs",
    "load_model",
    "load_pretrained",
    "model_args",
    "num_classes",
]
