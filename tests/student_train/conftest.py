"""Fixtures for the student trainer: a tiny teacher and the stores `md cache-teacher` makes
from it (made once per session, read-only for the tests).

Everything here runs with one torch thread: on tiny tensors two intra-op threads fighting
over shared cores are several times slower than one (the folder took 112 s instead of 17 s
on a busy 2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread, run_cli
from tests.student_train.caching import cache


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def det_teacher(synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu-tiny detection teacher (2 iterations) on the synthetic set."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
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


@pytest.fixture(scope="session")
def full_store(
    det_teacher: Path, synth_det: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """8 samples in 2 shards; flipped views; bundled inputs (thermal ÷ 16) and boxes."""
    store = tmp_path_factory.mktemp("stores") / "full.zarr"
    with one_torch_thread():
        return cache(
            det_teacher,
            synth_det,
            store,
            "--flip-views",
            "--bundle-inputs",
            "--thermal-factor",
            "16",
        )


@pytest.fixture(scope="session")
def plain_store(
    det_teacher: Path, synth_det: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Targets only (no flipped views, no inputs): images come from --data."""
    store = tmp_path_factory.mktemp("stores") / "plain.zarr"
    with one_torch_thread():
        return cache(det_teacher, synth_det, store)
