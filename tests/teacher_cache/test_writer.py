"""The shard writers (thread and child process, one contract) and shard batching, on a tiny
store without a teacher."""

from __future__ import annotations

import numpy as np
import pytest

from md.errors import StoreError
from md.stores import LevelSpec, StoreSchema, create_store
from md.teacher_cache import Shard, ShardWriter, shard_batches
from md.teacher_cache.writer import ProcessShardWriter, make_writer, shard_stored_bytes
from tests.fp import U16

WRITERS = [ShardWriter, ProcessShardWriter]

SCHEMA = StoreSchema(n=10, shard_size=4, levels=(LevelSpec("c3", 2, 4, 4, 8),))


def shard(k: int, bad: bool = False) -> Shard:
    rng = np.random.default_rng(k)
    size = len(SCHEMA.shard_range(k))
    feats = rng.random((size, 2, 4, 4), dtype=np.float32)
    if bad:
        feats[0, 0, 0, 0] = np.nan
    arrays = {"features/c3": feats, "attention/c3": rng.random((size, 1, 4, 4), dtype=np.float32)}
    ids = [f"s{i}" for i in SCHEMA.shard_range(k)]
    return Shard(k, arrays, ids, ["day"] * size)


def test_batches_never_cross_a_shard():
    assert shard_batches(SCHEMA, [0, 1, 2], 3) == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    assert shard_batches(SCHEMA, [2, 0], 8) == [[8, 9], [0, 1, 2, 3]]


@pytest.mark.parametrize("writer", WRITERS)
def test_writer_stores_every_submitted_shard_and_counts_bytes(tmp_path, writer):
    store = create_store(tmp_path / "s.zarr", SCHEMA)
    seen = []
    with writer(store, max_queued=1, on_written=lambda s, b: seen.append((s.index, b))) as w:
        for k in (2, 0, 1):
            w.submit(shard(k))
    assert store.is_complete() and [k for k, _ in seen] == [2, 0, 1]
    total = sum(store.stored_bytes(name) for name in store.raw_names())
    assert w.bytes_written == sum(b for _, b in seen) == total
    assert shard_stored_bytes(store, 0) == seen[1][1]
    np.testing.assert_allclose(
        store.read([9])["features/c3"][0],
        shard(2).arrays["features/c3"][1],
        rtol=U16,
        atol=2.0**-25,  # the lossless codec: fp16 round to nearest (subnormal half step)
    )


@pytest.mark.parametrize("writer", WRITERS)
def test_writer_error_reaches_the_caller_and_later_shards_stay_unwritten(tmp_path, writer):
    store = create_store(tmp_path / "s.zarr", SCHEMA)
    with pytest.raises(StoreError, match="NaN"), writer(store) as w:
        w.submit(shard(0))
        w.submit(shard(1, bad=True))
        w.submit(shard(2))
    assert store.missing_shards() == [1, 2]


@pytest.mark.parametrize("writer", WRITERS)
def test_caller_failure_still_writes_the_submitted_shards(tmp_path, writer):
    store = create_store(tmp_path / "s.zarr", SCHEMA)
    with pytest.raises(KeyboardInterrupt), writer(store) as w:
        w.submit(shard(0))
        w.submit(shard(1))
        raise KeyboardInterrupt  # e.g. Ctrl-C during the teacher forward of shard 2
    assert store.missing_shards() == [2]


def test_a_dead_writer_process_is_an_error_not_a_silent_loss(tmp_path, monkeypatch):
    store = create_store(tmp_path / "s.zarr", SCHEMA)

    def die(*args, **kwargs):
        import os

        os._exit(3)  # the child vanishes mid-shard (killed, out of memory)

    monkeypatch.setattr(type(store), "write_shard", die)  # inherited by the forked child
    with pytest.raises(StoreError, match="writer process died"), ProcessShardWriter(store) as w:
        w.submit(shard(0))
        w.submit(shard(1))
    assert store.missing_shards() == [0, 1, 2]


def test_auto_writer_is_a_process_on_linux_outside_daemons(tmp_path, monkeypatch):
    import multiprocessing
    import sys

    store = create_store(tmp_path / "s.zarr", SCHEMA)
    with make_writer(store) as w:
        assert isinstance(
            w, ProcessShardWriter if sys.platform.startswith("linux") else ShardWriter
        )
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    with make_writer(store) as w:  # e.g. a Dask worker: no children allowed
        assert isinstance(w, ShardWriter)
