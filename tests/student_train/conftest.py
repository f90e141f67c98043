"""Fixtures for the student trainer: a tiny teacher and the stores `md cache-teacher` makes
from it (made once per session, read-only for the tests).

Everything here runs with one torch thread: on tiny tensors two intra-op threads fighting
over shared cores are several times slower than one (the folder took 112 s instead of 17 s
on a busy 2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread
from tests.student_train.caching import cache


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def det_teacher(tiny_det_teacher: Path) -> Path:
    """The session's cpu-tiny detection teacher (tests/conftest.py)."""
    return tiny_det_teacher


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
