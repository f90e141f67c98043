"""`CheckedStore` through zarr's own store conformance suite (`zarr.testing.store.StoreTests`).

`CheckedStore` wraps every backend md reads and writes; zarr's suite pins that the wrapper
still behaves as a zarr `Store` (get with byte ranges, sizes, listings, read-only handles,
pickling, the context manager), so a zarr upgrade that changes the `Store` contract shows up
here and not as a damaged store. Run over a `LocalStore` (what directory stores use) and a
`MemoryStore` (how `create_store` lays a store out).

No test of the suite is overridden: CheckedStore departs from a plain store only where the
suite does not look (none of its tests reads an absent *chunk* key, none puts a link in a
store), so those departures get tests of their own below. Only the suite's async fixtures
are replaced, and its three abstract tests written. This project runs no asyncio pytest
plugin, so `_on_zarr_loop` turns each async test into a plain one that runs on zarr's own
event loop (as every md store call does).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore
from zarr.testing.store import StoreTests

from md.stores.backends import CheckedStore, MissingChunkError


def _on_zarr_loop(cls: type) -> type:
    """Replace every async ``test_*`` method (inherited ones too) by a sync one that runs it
    with `zarr.core.sync.sync`; the signature stays, so pytest still injects the fixtures."""
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):

            def run(*args: Any, _fn: Any = fn, **kwargs: Any) -> None:
                sync(_fn(*args, **kwargs))

            wrapped = functools.wraps(fn)(run)
            wrapped.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
            setattr(cls, name, wrapped)
    return cls


class _CheckedStoreTests(StoreTests[CheckedStore, cpu.Buffer]):
    """What both wrapped backends share; subclasses say how to reach the wrapped data."""

    store_cls = CheckedStore
    buffer_cls = cpu.Buffer

    # zarr's `store` / `store_not_open` fixtures are async; these are the same, sync.
    @pytest.fixture
    def store(self, open_kwargs: dict[str, Any]) -> CheckedStore:
        return sync(self.store_cls.open(**open_kwargs))

    @pytest.fixture
    def store_not_open(self, store_kwargs: dict[str, Any]) -> CheckedStore:
        return self.store_cls(**store_kwargs)

    def test_store_supports_writes(self, store: CheckedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: CheckedStore) -> None:
        assert store.supports_listing

    def test_store_repr(self, store: CheckedStore) -> None:
        assert repr(store) == f"CheckedStore({store._store!r})"

    # -- md's deliberate departures from a plain zarr store --------------------------------

    def test_absent_chunk_raises_instead_of_reading_as_fill(self, store: CheckedStore) -> None:
        """A plain zarr store returns None for an absent key, which zarr reads as the fill
        value: a lost shard would read as zeros. CheckedStore raises for absent *chunk* keys
        (md writes every chunk, ``write_empty_chunks=True``), except inside ``writing()``,
        where zarr reads a shard it is about to create; other keys still return None."""
        proto = default_buffer_prototype()
        with pytest.raises(MissingChunkError) as e:
            sync(store.get("features/C3/c/0/0/0/0", proto))
        assert e.value.key == "features/C3/c/0/0/0/0"
        with pytest.raises(MissingChunkError):
            sync(store.get("c/1", proto, RangeByteRequest(0, 2)))
        with store.writing():
            assert sync(store.get("features/C3/c/0/0/0/0", proto)) is None
        assert sync(store.get("features/C3/zarr.json", proto)) is None
        assert sync(store.get("foo/c/0.0", proto)) is None  # not a v3 default chunk key


@_on_zarr_loop
class TestCheckedLocalStore(_CheckedStoreTests):
    async def get(self, store: CheckedStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((store._store.root / key).read_bytes())

    async def set(self, store: CheckedStore, key: str, value: Buffer) -> None:
        path = store._store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": LocalStore(str(tmp_path))}

    @pytest.fixture
    def open_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    def test_symbolic_link_inside_the_store_is_refused(
        self, store: CheckedStore, tmp_path: Path
    ) -> None:
        """A plain LocalStore follows a link inside its root to data that is not the store's
        (or writes through it outside the store); CheckedStore refuses such keys."""
        from md.errors import StoreError

        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.mkdir()
        (outside / "0").write_bytes(b"not this store's")
        (tmp_path / "linked").symlink_to(outside, target_is_directory=True)
        data = self.buffer_cls.from_bytes(b"x")
        with pytest.raises(StoreError, match="linked is a symbolic link"):
            sync(store.get("linked/0", default_buffer_prototype()))
        with pytest.raises(StoreError, match="linked is a symbolic link"):
            sync(store.set("linked/1", data))
        with pytest.raises(StoreError, match="linked is a symbolic link"):
            sync(store.getsize("linked/0"))
        # Writes that WrapperStore would hand straight to the wrapped store are refused too.
        with pytest.raises(StoreError, match="linked is a symbolic link"):
            sync(store.set_if_not_exists("linked/1", data))
        with pytest.raises(StoreError, match="linked is a symbolic link"):
            sync(store._set_many([("plain", data), ("linked/1", data)]))
        assert not (outside / "1").exists()
        assert (tmp_path / "plain").read_bytes() == b"x"  # the other writes of a batch land


@_on_zarr_loop
class TestCheckedMemoryStore(_CheckedStoreTests):
    async def get(self, store: CheckedStore, key: str) -> Buffer:
        return store._store._store_dict[key]

    async def set(self, store: CheckedStore, key: str, value: Buffer) -> None:
        store._store._store_dict[key] = value

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"store": MemoryStore({})}

    @pytest.fixture
    def open_kwargs(self, store_kwargs: dict[str, Any]) -> dict[str, Any]:
        # The same dict as `store_kwargs`, so `test_store_eq` compares equal stores.
        return {"store_cls": MemoryStore, "store_dict": store_kwargs["store"]._store_dict}
