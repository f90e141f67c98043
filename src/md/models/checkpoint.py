"""Checkpoints: the format, and reading one back (the model factory's `load_model` and the
training loop's resume both read them; `md.train.checkpoint` writes them).

A checkpoint is a plain dict saved with `torch.save` and loaded with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only (no pickled
classes). Keys: `format`, `md_version`, `task`, `model_kind`, `model_args`, `config`,
`dataset_fingerprint`, `iteration`, `weights`, `weights_sha256` (and, in resume files,
`optimizer`). `weights_sha256` is recomputed on load, so a truncated or edited file is caught.
Lineage elsewhere (stores, student checkpoints) records the sha256 of the checkpoint *file*.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from md.errors import MdError

FORMAT = "md-checkpoint/1"


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the tensors, in key order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)  # 0-d tensors too
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(
    path: str | Path, *, task: str | None = None, model_kind: str | None = None
) -> dict[str, Any]:
    """Load and verify a checkpoint; `task` / `model_kind` refuse one made for something else."""
    path = Path(path)
    if not path.is_file():
        raise MdError(f"{path}: checkpoint not found; check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means "not ours / damaged"
        raise MdError(
            f"{path}: not a readable md checkpoint ({type(e).__name__}): truncated or not a "
            "checkpoint; re-copy it or pass the .pt file a training command wrote"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MdError(
            f"{path}: not an md checkpoint (no '{FORMAT}' format tag); pass the .pt file a "
            "training command wrote"
        )
    if weights_sha256(ckpt["weights"]) != ckpt.get("weights_sha256"):
        raise MdError(f"{path}: weights do not match their sha256; the file is damaged: re-copy it")
    if task is not None and ckpt.get("task") != task:
        raise MdError(
            f"{path}: checkpoint is for {ckpt.get('task')}, not {task}; use a {task} checkpoint"
        )
    if model_kind is not None and ckpt.get("model_kind") != model_kind:
        raise MdError(
            f"{path}: checkpoint holds a {ckpt.get('model_kind')} model, not a {model_kind}"
        )
    return ckpt
