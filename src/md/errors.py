"""User-facing errors.

An `MdError` carries a one-line message that names the file at fault and the fix. The CLI
prints it as `md: error: ...` and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import errno
import os


class MdError(Exception):
    """A problem with the user's input that the user can fix."""


class DataError(MdError):
    """A dataset on disk is missing, malformed or inconsistent."""


class ConfigError(MdError):
    """A config file or key=value override is invalid."""


class StoreError(MdError):
    """A teacher-target store is missing, malformed, corrupt, read-only or misused."""


class IncompleteStoreError(StoreError):
    """Samples were requested from shards that were never written (never read as zeros)."""

    def __init__(self, message: str, missing_shards: list[int]) -> None:
        super().__init__(message)
        self.missing_shards = missing_shards

    def __reduce__(self) -> tuple[type[IncompleteStoreError], tuple[str, list[int]]]:
        # Picklable for DataLoader / Dask workers, which re-raise errors in the parent.
        return (type(self), (str(self), self.missing_shards))


class DiskError(MdError):
    """Writing a file failed for a reason the user fixes on the machine: a full disk or
    quota, a read-only filesystem, missing permission."""


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def disk_error(
    error: OSError, path: str | os.PathLike[str], what: str, then: str = "rerun the same command"
) -> DiskError | None:
    """A one-line `DiskError` for a failed write of `what` at `path`, naming the fix; None
    for OS errors that are not about the disk (the caller keeps those)."""
    where = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(where)) or "."
    if error.errno in _DISK_FULL:
        return DiskError(
            f"{where}: cannot write {what}: no space left on the disk (or quota) holding "
            f"{folder}; free space (df -h {folder}), then {then}"
        )
    if error.errno == errno.EROFS:
        return DiskError(
            f"{where}: cannot write {what}: the filesystem is read-only; write it elsewhere"
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return DiskError(
            f"{where}: cannot write {what}: permission denied; write it where you may, or "
            f"fix the permissions of {folder}"
        )
    return None
