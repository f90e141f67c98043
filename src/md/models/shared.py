"""What the teacher, the student and the decision-level baseline share: the task and level
checks, the task head (`md.models.heads.build_head`), the batch entries its loss needs and
the weighted total of named loss parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from md.errors import MdError
from md.models.heads import build_head
from md.models.resnet import LEVELS

TASKS: tuple[str, ...] = ("detection", "segmentation")
_TARGET_KEYS: dict[str, tuple[str, ...]] = {
    "detection": ("boxes", "box_ignore"),
    "segmentation": ("labels",),
}


def check_task(task: str) -> str:
    """Return ``task`` if it is "detection" or "segmentation", else raise MdError."""
    if task not in TASKS:
        raise MdError(f"task must be one of {TASKS}, got {task!r}")
    return task


def check_levels(levels: Sequence[str], allow_empty: bool) -> tuple[str, ...]:
    """Validate a subset of ("c3", "c4", "c5"); returned in pyramid order."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or (not levels and not allow_empty):
        raise MdError(f"levels must be a non-empty subset of {LEVELS}, got {tuple(levels)}")
    return tuple(lv for lv in LEVELS if lv in levels)


def build_task_head(
    task: str,
    in_channels: Mapping[str, int],
    num_classes: int,
    head_kwargs: Mapping[str, Any] | None,
) -> Any:
    """The task head from ``md.models.heads.build_head``.

    ``num_classes`` goes to the segmentation head only (detection is single-class
    pedestrian). Typed ``Any``: heads are nn.Modules with ``loss``/``predict``/``average``.
    """
    kwargs = dict(head_kwargs or {})
    if task == "segmentation":
        kwargs.setdefault("num_classes", num_classes)
    return build_head(task, dict(in_channels), **kwargs)


def head_targets(task: str, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that the head's ``loss`` needs."""
    missing = [k for k in _TARGET_KEYS[task] if k not in batch]
    if missing:
        raise MdError(f"{task} batch lacks {missing}; pass the collated dataset items")
    targets = {k: batch[k] for k in _TARGET_KEYS[task]}
    if batch.get("sample_weight") is not None:  # md.train.group_weights: (B,) loss weights
        targets["sample_weight"] = batch["sample_weight"]
    return targets


def weighted_total(parts: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Σ weight[name] · part over the named loss parts (missing weights are 1)."""
    unknown = sorted(set(weights) - set(parts))
    if unknown:
        raise MdError(f"loss weights name unknown parts {unknown}; parts are {sorted(parts)}")
    return torch.stack([weights.get(k, 1.0) * v.float() for k, v in parts.items()]).sum()
