"""Fixtures for the end-to-end S3 tests: moto's server (tests/s3server.py) and a tiny teacher.

Torch runs on one thread here (tiny models on a shared 2-core machine: see tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread, run_cli


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def s3_teacher(synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu-tiny detection teacher (2 iterations) on the synthetic set."""
    out = tmp_path_factory.mktemp("s3-teacher") / "teacher.pt"
    with one_torch_thread():
        run_cli(
            "train-teacher",
            "--data",
            str(synth_det),
            "--out",
            str(out),
            "--task",
            "detection",
            "--preset",
            "cpu-tiny",
            "batch_size=2",
            "iterations=2",
            "progress=false",
        )
    return out
