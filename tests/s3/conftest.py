"""Fixtures for the end-to-end S3 tests: moto's server (tests/s3server.py) and a tiny teacher.

Torch runs on one thread here (tiny models on a shared 2-core machine: see tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def s3_teacher(tiny_det_teacher: Path) -> Path:
    """The session's cpu-tiny detection teacher (tests/conftest.py)."""
    return tiny_det_teacher
