"""The one way to build a model and to rebuild it from a checkpoint (timm's ``create_model``).

- `build_model(kind, task, **kwargs)`: "teacher" | "student" | "decision" for a task;
- `model_args(kind, task, ...)`: the constructor arguments a training command saves in its
  checkpoint (``model_args``), so that `load_model` rebuilds exactly that model;
- `load_model(path)`: the model a checkpoint records, with its weights, in eval mode;
- `num_classes(task)` and `head_kwargs(...)`: what the task head is built with, the same for
  teachers and students (a student's head matches its teacher's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from md.data.mfnet import NUM_CLASSES as MFNET_CLASSES
from md.errors import MdError
from md.models.checkpoint import load_checkpoint
from md.models.decision import DecisionLevel
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


def num_classes(task: str) -> int:
    """Classes the task head predicts: MFNet's 9 (incl. unlabeled) for segmentation, one
    (pedestrian) for detection."""
    return MFNET_CLASSES if task == "segmentation" else 1


def head_kwargs(
    task: str, channels: int, assign: str = "iou", class_weights: tuple[float, ...] = ()
) -> dict[str, Any]:
    """Task-head options shared by teachers and students (same head on both sides)."""
    if task == "detection":
        return {"assign": assign, "neck_channels": channels}
    out: dict[str, Any] = {"psp_channels": channels, "decoder_channels": channels}
    if class_weights:
        out["class_weights"] = list(class_weights)
    return out


def model_args(
    kind: str,
    task: str,
    *,
    width: float,
    head_channels: int,
    levels: Sequence[str] = (),
    assign: str = "iou",
    class_weights: tuple[float, ...] = (),
    in_channels: int = 6,
    head_input: str = "attended",
) -> dict[str, Any]:
    """Constructor arguments saved in the checkpoint so `load_model` can rebuild the model.

    ``levels``: the teacher's GAFF levels or the student's distilled ones (the decision-level
    baseline has none); ``in_channels`` and ``head_input``: the student's only.
    """
    if kind not in MODEL_KINDS:
        raise MdError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    heads = head_kwargs(task, head_channels, assign, class_weights)
    if kind == "student":
        return {
            "in_channels": in_channels,
            "width": width,
            "levels": list(levels),
            "head_input": head_input,
            "num_classes": num_classes(task),
            "head_kwargs": heads,
        }
    args: dict[str, Any] = {"width": width, "num_classes": num_classes(task), "head_kwargs": heads}
    if kind == "teacher":
        args["levels"] = list(levels)
    return args


def load_model(ckpt_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model recorded in a checkpoint and load its weights (eval mode)."""
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt["model_kind"], ckpt["task"], **ckpt["model_args"])
    model.load_state_dict(ckpt["weights"])
    model.eval()
    return model, ckpt
