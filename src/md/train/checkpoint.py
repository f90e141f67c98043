"""Writing checkpoints atomically (the format and reading them: `md.models.checkpoint`).

A full disk while saving is a one-line `DiskError` and the last good file stays in place.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from md import __version__
from md.errors import disk_error
from md.models.checkpoint import FORMAT, weights_sha256


def save_checkpoint(
    path: str | Path, payload: dict[str, Any], *, then: str = "rerun the same command"
) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves half a file.

    A full disk (or quota, read-only filesystem) is a one-line `DiskError` ending in `then`
    (what to do once there is space); the temp file is removed, the old file is kept."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in payload["weights"].items()}
    full = {
        "format": FORMAT,
        "md_version": __version__,
        **payload,
        "weights": state,
        "weights_sha256": weights_sha256(state),
    }
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
