"""The store contract: every backend (directory, packed zip, fsspec) passes `StoreContract`.

A backend's test class subclasses `StoreContract` and overrides the `make_store` fixture: a
builder ``build(schema, shards=None, attrs=None) -> url`` that writes the given shards (all
by default) with `shard_arrays` data and returns a URL that `open_store(url)` reads.
``writable`` says whether the URL itself opens with mode 'r+'.

Also here: deterministic test data with realistic feature statistics (post-ReLU, GAFF-weighted:
relu(gaussian) * (1 + u) * (1 + v), u, v ~ U[0, 1], so half zeros and a heavy-ish tail).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import google_crc32c
import numpy as np
import pytest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from md.errors import IncompleteStoreError, StoreError
from md.stores import (
    LevelSpec,
    StoreSchema,
    TargetStore,
    create_store,
    detection_extras,
    info,
    input_extras,
    open_store,
    verify,
)
from md.stores.arrays import shard_object_key
from md.stores.codecs import compact_error_bound, get_preset

Builder = Callable[..., str]
ATTRS = {
    "teacher": {"sha256": "ab" * 32, "config": {"width": 0.25}},
    "dataset": {"fingerprint": "cd" * 32, "split": "train"},
}


def gaff_features(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Post-ReLU, GAFF-weighted features: relu(N(0, 1)) * (1 + u) * (1 + v)."""
    g = np.maximum(rng.standard_normal(shape), 0.0)
    return (g * (1 + rng.random(shape)) * (1 + rng.random(shape))).astype(np.float32)


def tiny_schema(
    codec: str = "lossless", n: int = 10, shard_size: int = 4, *, full: bool = False
) -> StoreSchema:
    """Two levels; `full` adds flipped views and bundled inputs/boxes (every array kind)."""
    levels = (LevelSpec("C3", 6, 8, 10, 8), LevelSpec("C4", 4, 4, 5, 16))
    extras = input_extras((16, 20), (4, 5)) + detection_extras(3) if full else ()
    return StoreSchema(n, shard_size, levels, codec=codec, flips=full, extras=extras)


def shard_arrays(schema: StoreSchema, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic target arrays for shard k (same seed, same arrays)."""
    rng = np.random.default_rng([seed, k])
    size = len(schema.shard_range(k))
    out: dict[str, np.ndarray] = {}
    for name, shape in schema.target_shapes().items():
        full = (size, *shape)
        if name.startswith("features"):
            out[name] = gaff_features(rng, full)
        elif name.startswith("attention"):
            out[name] = rng.random(full).astype(np.float32)
        elif name == "boxes":
            out[name] = rng.random(full).astype(np.float32) * 100
        elif name == "num_boxes":
            out[name] = rng.integers(0, 4, full)
        else:
            out[name] = rng.integers(0, 256, full).astype(np.uint8)
    return out


def sample_ids(schema: StoreSchema, k: int) -> list[str]:
    return [f"set06/V000/I{i:05d}" for i in schema.shard_range(k)]


def groups(schema: StoreSchema, k: int) -> list[str]:
    return ["day" if i % 3 else "night" for i in schema.shard_range(k)]


def write_shards(store: TargetStore, shards: Iterable[int] | None = None, seed: int = 0) -> None:
    schema = store.schema
    for k in range(schema.num_shards) if shards is None else shards:
        store.write_shard(
            k, shard_arrays(schema, k, seed), sample_ids(schema, k), groups(schema, k)
        )


def build_local(
    path: os.PathLike[str] | str,
    schema: StoreSchema,
    shards: Iterable[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    with create_store(path, schema, ATTRS if attrs is None else attrs) as store:
        write_shards(store, shards)
    return os.fspath(path)


def expected(schema: StoreSchema, indices: Iterable[int], seed: int = 0) -> dict[str, np.ndarray]:
    """What `read(indices)` should approximate: the float32 inputs plus ids and groups."""
    idx = list(indices)
    per = {k: shard_arrays(schema, k, seed) for k in {i // schema.shard_size for i in idx}}
    out: dict[str, np.ndarray] = {}
    for name in schema.target_shapes():
        out[name] = np.stack(
            [per[i // schema.shard_size][name][i % schema.shard_size] for i in idx]
        )
    out["sample_id"] = np.array([f"set06/V000/I{i:05d}" for i in idx])
    out["group"] = np.array(["day" if i % 3 else "night" for i in idx])
    return out


def assert_close_to_targets(
    schema: StoreSchema, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]
) -> None:
    """Per-codec error bounds: fp16 rounding, compact's sqrt-step bound, 1/510 for masks."""
    preset = get_preset(schema.codec)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        if name.startswith("features"):
            assert g.dtype == np.float32
            if preset.quantized:
                bound = compact_error_bound(np.abs(w).max(axis=(2, 3)), preset.steps)[
                    ..., None, None
                ]
                assert (np.abs(g - w) <= bound * (1 + 1e-5) + 1e-7).all(), name
                assert (g[w == 0] == 0).all(), f"{name}: zeros must stay exact"
            else:
                np.testing.assert_allclose(g, w, rtol=2**-11, atol=2**-24, err_msg=name)
        elif name.startswith("attention"):
            assert g.dtype == np.float32
            assert np.abs(g - w).max() <= 1 / 510 + 1e-6, name
        else:
            np.testing.assert_array_equal(
                g, w.astype(g.dtype) if g.dtype.kind != "U" else w, err_msg=name
            )


def _read_in_child(store: TargetStore, indices: list[int], conn: Any) -> None:
    out = store.read(indices, names=["features/C3", "sample_id"])
    conn.send(
        (
            out["features/C3"],
            out["sample_id"].tolist(),
            store._h is not None and store._h.pid == os.getpid(),
        )
    )
    conn.close()


class StoreContract:
    """Behaviour every backend must show. Subclasses override `make_store` and `writable`."""

    writable: bool = True

    @pytest.fixture
    def make_store(self, tmp_path: Any) -> Builder:  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def missing_url(self, tmp_path: Any) -> str:
        """A URL of this backend where no store exists."""
        return str(tmp_path / "absent.zarr")

    # -- round trip ---------------------------------------------------------------------------

    @pytest.mark.parametrize("codec", ["lossless", "compact", "raw"])
    def test_round_trip_within_codec_bounds(self, make_store: Builder, codec: str) -> None:
        schema = tiny_schema(codec, full=True)
        with open_store(make_store(schema)) as store:
            got = store.read(range(schema.n))
        assert set(got) == {*schema.target_shapes(), "sample_id", "group"}
        assert_close_to_targets(schema, got, expected(schema, range(schema.n)))

    def test_read_keeps_order_duplicates_and_selected_names(self, make_store: Builder) -> None:
        schema = tiny_schema()
        order = [9, 0, 5, 0, 4]
        with open_store(make_store(schema)) as store:
            got = store.read(order, names=["attention/C4", "sample_id"])
        assert set(got) == {"attention/C4", "sample_id"}
        want = expected(schema, order)
        assert got["sample_id"].tolist() == want["sample_id"].tolist()
        assert np.abs(got["attention/C4"] - want["attention/C4"]).max() <= 1 / 510 + 1e-6

    def test_metadata_and_provenance(self, make_store: Builder) -> None:
        schema = tiny_schema("compact")
        with open_store(make_store(schema)) as store:
            assert store.schema == schema
            assert (store.n, store.shard_size, store.num_shards) == (10, 4, 3)
            assert store.shard_range(2) == range(8, 10)
            assert store.attrs["teacher"] == ATTRS["teacher"]
            assert store.attrs["dataset"] == ATTRS["dataset"]
            assert store.attrs["schema_version"] == 2 and store.attrs["codec"]["name"] == "compact"
            assert {"created", "tool_version"} <= set(store.attrs)
            assert (
                store.written_mask().all() and store.is_complete() and store.missing_shards() == []
            )

    def test_every_shard_records_the_run_and_its_objects(self, make_store: Builder) -> None:
        """The root identity is sha256 of the creation provenance (canonical JSON, computed
        here by hand); each shard's record repeats it and holds the crc32c of every object."""
        schema = tiny_schema("compact", full=True)
        canonical = json.dumps(ATTRS, sort_keys=True, separators=(",", ":")).encode()
        want = hashlib.sha256(canonical).hexdigest()
        with open_store(make_store(schema)) as store:
            assert store.attrs["identity"] == {"sha256": want, "keys": ["dataset", "teacher"]}
            names = [s.name for s in schema.stored_arrays()]
            names.remove("shard_record"), names.remove("written")
            for k in range(store.num_shards):
                rng = store.shard_range(k)
                rows = store.raw_array("shard_record")[rng.start : rng.stop].tolist()
                assert len(set(rows)) == 1
                record = json.loads(rows[0])
                assert record["identity"] == want and record["shard"] == k
                assert sorted(record["objects"]) == sorted(names)
                for name in names:
                    arr = store.raw_array(name)
                    buf = sync(
                        arr.store_path.store.get(
                            shard_object_key(arr, k), default_buffer_prototype()
                        )
                    )
                    assert record["objects"][name] == f"{google_crc32c.value(buf.to_bytes()):08x}"

    # -- errors -------------------------------------------------------------------------------

    def test_missing_shards_raise_never_zeros(self, make_store: Builder) -> None:
        schema = tiny_schema()
        with open_store(make_store(schema, shards=[0, 2])) as store:
            assert store.missing_shards() == [1] and not store.is_complete()
            assert store.written_mask().tolist() == [True] * 4 + [False] * 4 + [True] * 2
            with pytest.raises(IncompleteStoreError, match=r"shards \[1\]") as err:
                store.read([0, 5, 9])
            assert err.value.missing_shards == [1]
            assert pickle.loads(pickle.dumps(err.value)).missing_shards == [1]
            assert store.read([0, 9])["sample_id"].tolist() == [
                "set06/V000/I00000",
                "set06/V000/I00009",
            ]

    def test_read_only_errors(self, make_store: Builder) -> None:
        schema = tiny_schema()
        url = make_store(schema, shards=[0])
        with open_store(url) as store:
            with pytest.raises(StoreError, match="read-only"):
                store.write_shard(
                    1, shard_arrays(schema, 1), sample_ids(schema, 1), groups(schema, 1)
                )
            with pytest.raises(StoreError, match="read-only"):
                store.set_attrs({"note": "x"})
        if not self.writable:
            with pytest.raises(StoreError, match="read-only"):
                open_store(url, mode="r+")

    def test_bad_requests_are_store_errors(self, make_store: Builder, missing_url: str) -> None:
        with open_store(make_store(tiny_schema())) as store:
            with pytest.raises(StoreError, match="out of range"):
                store.read([10])
            with pytest.raises(StoreError, match="out of range"):
                store.read([-1])
            with pytest.raises(StoreError, match="no arrays"):
                store.read([0], names=["features/C9"])
        with pytest.raises(StoreError):
            open_store(missing_url)

    # -- reopening and processes --------------------------------------------------------------

    def test_reopen_and_pickle_give_the_same_data(self, make_store: Builder) -> None:
        url = make_store(tiny_schema("compact"))
        first = open_store(url).read([1, 6])
        clone = pickle.loads(pickle.dumps(open_store(url)))
        assert clone._h is None  # handles never travel: reopened lazily in the new process
        again = clone.read([1, 6])
        for name in first:
            np.testing.assert_array_equal(first[name], again[name])

    def test_handle_is_reopened_after_fork(self, make_store: Builder) -> None:
        store = open_store(make_store(tiny_schema()))
        parent = store.read([2], names=["features/C3", "sample_id"])
        parent_handle = store._h
        ctx = multiprocessing.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_read_in_child, args=(store, [2], send))
        proc.start()
        feats, ids, reopened = recv.recv()
        proc.join(10)
        assert proc.exitcode == 0 and reopened
        np.testing.assert_array_equal(feats, parent["features/C3"])
        assert ids == ["set06/V000/I00002"]
        assert store._h is parent_handle  # the parent's handle is untouched and still works
        np.testing.assert_array_equal(store.read([2])["features/C3"], parent["features/C3"])

    def test_shard_index_read_once_per_shard(self, make_store: Builder) -> None:
        # Trainer batches sit within a few shards: after the first sample of a shard, each
        # further sample costs one byte-range request per array (index and `written` cached).
        store = open_store(make_store(tiny_schema()))
        store.read([0], names=["features/C3"])
        counter = store._handle().store
        before = counter.requests
        store.read([1, 2], names=["features/C3"])
        assert counter.requests - before == 2
        before = counter.requests
        store.read([4], names=["features/C3"])  # new shard: written chunk + index + chunk
        assert counter.requests - before == 3
        before = counter.requests
        store.read([5], names=["features/C3"])
        assert counter.requests - before == 1

    # -- tools --------------------------------------------------------------------------------

    def test_info_and_verify_on_a_good_store(self, make_store: Builder) -> None:
        schema = tiny_schema("compact")
        url = make_store(schema)
        report = info(url)
        assert report["samples"] == 10 and report["written"] == 10 and report["complete"]
        assert report["bytes_per_sample"]["features/C3"] > 0
        assert report["ratio_vs_float32"]["total"] > 1
        assert report["provenance"]["teacher"] == ATTRS["teacher"]
        assert verify(url).ok
