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
