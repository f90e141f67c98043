"""Tiny teachers for the cache tests (cpu-tiny, 2 iterations: seconds), trained once.

The tests run torch on one thread: the models are tiny, and on a shared 2-core machine two
OpenMP threads competing with other processes (and the writer thread) run many times slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread as one_thread
from tests.conftest import run_cli

TINY = ["--preset", "cpu-tiny", "iterations=2", "batch_size=2", "progress=false"]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


def train_tiny(data: Path, out: Path, task: str, *extra: str) -> Path:
    with one_thread():
        run_cli(
            "train-teacher", "--data", str(data), "--out", str(out), "--task", task, *TINY, *extra
        )
    return out


@pytest.fixture(scope="session")
def det_teacher(synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GAFF detection teacher (levels c3, c4, c5) trained on synth_det."""
    return train_tiny(synth_det, tmp_path_factory.mktemp("teachers") / "det.pt", "detection")


@pytest.fixture(scope="session")
def other_det_teacher(synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another detection teacher: other seed, GAFF at c4 and c5 only."""
    out = tmp_path_factory.mktemp("teachers") / "other.pt"
    return train_tiny(synth_det, out, "detection", "seed=1", "levels=[c4,c5]")
