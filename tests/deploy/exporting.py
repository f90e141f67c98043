"""Helpers of the export tests: small random checkpoints of every exported kind, and the
reference forward `md evaluate model` runs (float32 and float64) on camera frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from md.data.transforms import student_input
from md.models import build_model, load_model, model_args
from md.train.checkpoint import save_checkpoint

LEVELS = ("c3", "c4", "c5")
# name: (kind, task, model_args extras, config)
KINDS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "det_md": ("student", "detection", {"levels": LEVELS}, {"thermal_factor": 16}),
    "det_trunk": (
        "student",
        "detection",
        {"levels": LEVELS, "head_input": "trunk"},
        {"thermal_factor": 4},
    ),
    "det_native": ("student", "detection", {"levels": ()}, {"thermal_factor": 64}),
    "det_visible": ("student", "detection", {"in_channels": 3}, {"thermal_factor": "none"}),
    "det_teacher": ("teacher", "detection", {"levels": LEVELS}, {}),
    "seg_md": ("student", "segmentation", {"levels": LEVELS}, {"thermal_factor": 16}),
    "seg_visible": ("student", "segmentation", {"in_channels": 3}, {"thermal_factor": "none"}),
    "seg_teacher": ("teacher", "segmentation", {"levels": ("c4",)}, {}),
}


def make_checkpoint(path: Path, name: str, seed: int = 0) -> Path:
    """A width-1/8 model of kind `name` with random weights, saved as md checkpoints are.

    Detection classifiers get a zero bias and a wide weight spread, so that scores spread over
    (0, 1) and NMS has work to do; BatchNorm statistics are randomised (eval mode uses them)."""
    kind, task, extra, config = KINDS[name]
    torch.manual_seed(seed)
    args = model_args(kind, task, width=0.125, head_channels=16, **extra)
    model = build_model(kind, task, **args)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        if task == "detection":
            model.head.cls_out.bias.zero_()
            model.head.cls_out.weight.normal_(0, 0.3)
    payload = {
        "task": task,
        "model_kind": kind,
        "model_args": args,
        "config": {**config, "distill": bool(extra.get("levels"))},
        "weights": model.state_dict(),
        "iteration": 0,
        "dataset_fingerprint": None,
        "lineage": {"store": None, "teacher_sha256": "ab" * 32, "online_teacher": None},
    }
    save_checkpoint(path, payload)
    return path


def camera_frames(
    n: int, size_hw: tuple[int, int], thermal_hw: tuple[int, int] | None, seed: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random uint8 frames: visible (n, 3, H, W), thermal (n, 1, h, w) or None."""
    rng = np.random.default_rng(seed)
    vis = rng.integers(0, 256, (n, 3, *size_hw), dtype=np.uint8)
    th = None if thermal_hw is None else rng.integers(0, 256, (n, 1, *thermal_hw), dtype=np.uint8)
    return vis, th


def reference_pred(
    ckpt: Path, visible: np.ndarray, thermal: np.ndarray | None, dtype: torch.dtype
) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's own head outputs on camera frames, computed as `md evaluate model`
    feeds it (frames / 255, thermal up-sampled bilinearly to full size, cat for a student),
    in `dtype` (float64: the reference the float32 results are measured against)."""
    model, meta = load_model(ckpt)
    model = model.to(dtype)
    v = torch.from_numpy(visible).to(dtype) / 255
    args: tuple[torch.Tensor, ...] = (v,)
    if thermal is not None:
        t = torch.from_numpy(thermal).to(dtype) / 255
        t = F.interpolate(t, size=v.shape[-2:], mode="bilinear", align_corners=False)
        args = (v, t) if meta["model_kind"] == "teacher" else (student_input(v, t),)
    with torch.no_grad():
        return model, model(*args)["pred"]
