"""User-facing errors.

An `MdError` carries a one-line message that names the file at fault and the fix. The CLI
prints it as `md: error: ...` and exits with status 2, never with a traceback.
"""

from __future__ import annotations


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
