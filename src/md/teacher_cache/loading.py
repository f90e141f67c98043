"""Loading the GAFF teacher a cache run reads, for the coordinator and for Dask workers
alike (a leaf: `run` and `cluster` both import it, neither imports the other for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from md.errors import MdError
from md.models import TwoStreamTeacher, load_model


def load_teacher(path: str | Path) -> tuple[TwoStreamTeacher, dict[str, Any]]:
    """The GAFF teacher of a checkpoint (eval mode, CPU) and the checkpoint dict."""
    model, ckpt = load_model(path)
    if ckpt["model_kind"] != "teacher":
        raise MdError(
            f"{path}: holds a {ckpt['model_kind']} model, not a GAFF teacher; "
            "cache a checkpoint from `md train-teacher --fusion gaff`"
        )
    assert isinstance(model, TwoStreamTeacher)
    return model, ckpt


__all__ = ["load_teacher"]
