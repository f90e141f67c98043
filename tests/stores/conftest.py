"""Fixtures for the store tests (data helpers and the contract suite live in contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from contract import build_local, tiny_schema


@pytest.fixture
def local_store(tmp_path: Path) -> Path:
    """A complete lossless directory store of 10 samples in shards of 4 (last shard: 2)."""
    return Path(build_local(tmp_path / "store.zarr", tiny_schema()))


@pytest.fixture
def compact_store(tmp_path: Path) -> Path:
    """A complete compact store with every array kind (flips, inputs, boxes)."""
    return Path(build_local(tmp_path / "compact.zarr", tiny_schema("compact", full=True)))
