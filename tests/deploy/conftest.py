"""Tiny checkpoints of every model kind (random weights moved off their initial values, so
that detections are not empty and class maps not constant)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from md.models import build_model, model_args
from md.models.resnet import LEVELS
from md.train.checkpoint import save_checkpoint

SIZE = {"width": 0.125, "head_channels": 16}

# name -> (kind, model_args options, thermal_factor saved in the config (None: not a student))
KINDS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "teacher": ("teacher", {"levels": LEVELS}, None),
    "md16": ("student", {"levels": LEVELS}, 16),
    "trunk4": ("student", {"levels": LEVELS, "head_input": "trunk"}, 4),
    "native64": ("student", {"levels": ()}, 64),
    "visible": ("student", {"levels": LEVELS, "in_channels": 3}, "none"),
    "decision": ("decision", {}, None),
}


def make_checkpoint(path: Path, name: str, task: str, seed: int = 0) -> Path:
    kind, opts, tf = KINDS[name]
    args = model_args(kind, task, **SIZE, **opts)
    torch.manual_seed(seed)
    model = build_model(kind, task, **args)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    config: dict[str, Any] = {} if tf is None else {"thermal_factor": tf}
    payload = {
        "task": task,
        "model_kind": kind,
        "model_args": args,
        "config": config,
        "dataset_fingerprint": {"sha256": "0" * 64},  # as md.data.dataset_fingerprint gives
        "iteration": 0,
        "weights": model.state_dict(),
        "lineage": {"store": "none", "teacher": "none"},
    }
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """(task, name) -> checkpoint file, for every name in KINDS and both tasks."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for task in ("detection", "segmentation"):
        for name in KINDS:
            out[(task, name)] = make_checkpoint(root / f"{task}_{name}.pt", name, task)
    return out
