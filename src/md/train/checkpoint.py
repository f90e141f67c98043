"""Checkpoints: weights + everything needed to trust and reuse them.

A checkpoint is a plain dict saved with `torch.save` and loaded with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only (no pickled
classes). Keys: `format`, `md_version`, `task`, `model_kind`, `model_args`, `config`,
`dataset_fingerprint`, `iteration`, `weights`, `weights_sha256` (and, in resume files,
`optimizer`). `weights_sha256` is recomputed on load, so a truncated or edited file is caught.
Lineage elsewhere (stores, student checkpoints) records the sha256 of the checkpoint *file*.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from md import __version__
from md.errors import MdError, disk_error

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


def save_checkpoint(path: str | Path, payload: dict[str, Any], *,
                    then: str = "rerun the same command") -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves half a file.

    A full disk (or quota, read-only filesystem) is a one-line `DiskError` ending in `then`
    (what to do once there is space); the temp file is removed, the old file is kept."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in payload["weights"].items()}
    full = {"format": FORMAT, "md_version": __version__, **payload, "weights": state,
            "weights_sha256": weights_sha256(state)}
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Through a Python file, so a failed write raises the OSError (ENOSPC, EDQUOT) with
        # its errno; fsync before the rename, so a crash leaves the old file or the new one.
        with open(tmp, "wb") as f:
            torch.save(full, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save wraps a failed write in RuntimeError
        tmp.unlink(missing_ok=True)  # no half file left beside the last good checkpoint
        cause = e if isinstance(e, OSError) else _os_cause(e)
        err = disk_error(cause, path, "the checkpoint", then) if cause is not None else None
        if err is None:
            raise
        raise err from None


def _os_cause(error: BaseException) -> OSError | None:
    """The OSError behind `error` (torch.save raises RuntimeError for a failed write)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(error)
    for code, word in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota")):
        if word.lower() in text.lower():
            return OSError(code, os.strerror(code))
    return None


def load_checkpoint(path: str | Path, *, task: str | None = None,
                    model_kind: str | None = None) -> dict[str, Any]:
    """Load and verify a checkpoint; `task` / `model_kind` refuse one made for something else."""
    path = Path(path)
    if not path.is_file():
        raise MdError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means "not ours / damaged"
        raise MdError(f"{path}: not a readable md checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MdError(f"{path}: not an md checkpoint (no '{FORMAT}' format tag)")
    if weights_sha256(ckpt["weights"]) != ckpt.get("weights_sha256"):
        raise MdError(f"{path}: weights do not match their sha256; the file is damaged")
    if task is not None and ckpt.get("task") != task:
        raise MdError(f"{path}: checkpoint is for {ckpt.get('task')}, not {task}; "
                      f"use a {task} checkpoint")
    if model_kind is not None and ckpt.get("model_kind") != model_kind:
        raise MdError(f"{path}: checkpoint holds a {ckpt.get('model_kind')} model, "
                      f"not a {model_kind}")
    return ckpt
