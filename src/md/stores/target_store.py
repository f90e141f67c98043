"""`TargetStore`: one teacher-target store at a URL; write whole shards, read samples by index.

Where the rest lives: creating and resuming stores in `md.stores.create`, one process's open
handle in `md.stores.handle`, the concurrent array I/O in `md.stores.array_io`, what the
arrays hold (encoding, shard records, attributes) in `md.stores.encode`, their Zarr layout
in `md.stores.arrays`, and their names in `md.stores.schema`.

Invariants (the contract tests pin them for every backend):

- **One writer per shard.** `write_shard` writes every array of shard k in one go and sets
  ``written`` for the shard only after all of them are stored; a store may be written by many
  processes at once as long as no two write the same shard. Per-sample writes into a shared
  shard would lose data silently, so there is no per-sample write.
- **Never zeros.** `read` raises `IncompleteStoreError` (listing the shards) for samples whose
  shard is not ``written``; a chunk object missing from a written shard raises `StoreError`.
- **Per-process handles.** A `TargetStore` opens its Zarr handle lazily, keyed on the pid;
  after a fork (DataLoader / Dask worker) the child opens its own. Pickling keeps only the URL
  and mode. Open arrays and shard indexes are cached per handle, so a batch of samples from a
  few shards costs one index read per shard per process, then one byte range per sample and
  array. A batch read fetches all its arrays concurrently on zarr's event loop, so a remote
  store overlaps their round trips instead of paying them one array after another.
- **JSON only.** Group attributes are JSON (no pickle): the schema, codec, provenance.
- **Shards know their run.** The root's ``identity`` attribute is the sha256 of the
  provenance the store was created with (teacher checkpoint sha256, data fingerprint, ...).
  Every shard's ``shard_record`` (schema version >= 2) holds that identity and the crc32c of
  each of the shard's stored objects, written before ``written``: `md.stores.verify` catches
  a shard written by another run and an object swapped in from another shard or store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.sync import sync  # zarr's own bridge onto its event loop

from md.errors import IncompleteStoreError, StoreError
from md.stores.array_io import (
    object_bytes,
    object_sizes,
    raise_first,
    read_arrays,
    read_chunks_local,
    write_arrays,
)
from md.stores.backends import MissingChunkError, parse_location, stored_bytes
from md.stores.codecs import CodecPreset
from md.stores.encode import (
    checked_attrs,
    checked_strings,
    decode_target,
    encode_shard,
    shard_record,
    stored_names,
)
from md.stores.fingerprint import read_fingerprint
from md.stores.handle import INHERITED_HANDLES, Handle, open_handle, write_error
from md.stores.schema import (
    GROUP,
    META_NAMES,
    RECORD_VERSION,
    SAMPLE_ID,
    SHARD_RECORD,
    WRITTEN,
    StoreSchema,
)

Mode = Literal["r", "r+"]
Alloc = Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray]  # (shape, dtype) -> buffer


def _numpy_alloc(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class TargetStore:
    """A teacher-target store at a URL: directory, packed ``.zip`` (read-only) or fsspec URL.

    Cheap to construct and to pickle; the Zarr handle opens on first use in each process.
    """

    def __init__(self, url: str | os.PathLike[str], mode: Mode = "r") -> None:
        if mode not in ("r", "r+"):
            raise StoreError(f"store mode must be 'r' or 'r+', got {mode!r}")
        self.url = parse_location(url).url
        self.mode: Mode = mode
        self._h: Handle | None = None

    # -- per-process handle ---------------------------------------------------------------

    def _handle(self) -> Handle:
        if self._h is None or self._h.pid != os.getpid():
            if self._h is not None:
                # After fork the parent's handle is the parent's: never closed or used here,
                # and kept referenced so its client's finalizers do not run in this process.
                INHERITED_HANDLES.append(self._h)
            self._h = open_handle(parse_location(self.url), writable=self.mode == "r+")
        return self._h

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.mode, self._h = state["url"], state["mode"], None

    def close(self) -> None:
        if self._h is not None and self._h.pid == os.getpid():
            self._h.store.close()
        self._h = None

    def __enter__(self) -> TargetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TargetStore({self.url!r}, mode={self.mode!r})"

    def __len__(self) -> int:
        return self.n

    # -- metadata ---------------------------------------------------------------------------

    @property
    def schema(self) -> StoreSchema:
        return self._handle().schema

    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes (store-owned and provenance), as JSON values."""
        return self._handle().group.attrs.asdict()

    @property
    def n(self) -> int:
        return self.schema.n

    @property
    def shard_size(self) -> int:
        return self.schema.shard_size

    @property
    def num_shards(self) -> int:
        return self.schema.num_shards

    def shard_range(self, k: int) -> range:
        return self.schema.shard_range(k)

    @property
    def preset(self) -> CodecPreset:
        return self._handle().preset

    def raw_names(self) -> list[str]:
        """Names of the stored Zarr arrays (see `StoreSchema.stored_arrays`)."""
        return [spec.name for spec in self.schema.stored_arrays()]

    def raw_array(self, name: str, *, check: bool = True) -> zarr.Array:
        """A stored Zarr array as it lies (quantized features, uint8 masks), for verify/info.

        Reading it bypasses the ``written`` check; writing through it breaks the invariants.
        With ``check=False`` an array whose layout departs from the schema is returned too
        (verify and info report it); otherwise that is a StoreError.
        """
        if name not in self.raw_names():
            raise StoreError(f"{self.url}: no stored array {name!r}")
        return self._handle().array(name, check=check)

    def raw_arrays(self, names: Sequence[str], *, check: bool = True) -> list[zarr.Array]:
        """`raw_array` for several names, opened all at once (one round trip when remote)."""
        unknown = sorted(set(names) - set(self.raw_names()))
        if unknown:
            raise StoreError(f"{self.url}: no stored arrays {unknown}")
        return self._handle().open_arrays(names, check=check)

    def stored_bytes(self, name: str) -> int:
        """Bytes of the chunk/shard objects of stored array `name` (checksums and index included)."""
        return stored_bytes(self._handle().store, f"{name}/c/")

    def shard_stored_bytes(self, k: int) -> int:
        """Stored bytes of written shard k over every array (its objects' sizes, looked up
        concurrently; `write_shard` returns the same figure for a fresh write)."""
        arrays = self.raw_arrays(self.raw_names())
        with self._errors(f"shard {k}"):  # an object gone from a written shard: one line
            return sum(sync(object_sizes(arrays, k)))

    def dataset_fingerprint(self) -> dict[str, Any]:
        """The full dataset fingerprint the store was created with (ids and per-file sha256,
        as `md.data.dataset_fingerprint` made it), checked against the root's summary; the
        root attributes hold only that summary (`md.stores.fingerprint`)."""
        return read_fingerprint(self._handle().group, self.attrs, self.url)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace provenance attributes (JSON; store-owned keys are refused).

        Rewrites the group metadata: call it from one process (concurrent calls: last wins).
        """
        h = self._writable()
        h.group.attrs.update(checked_attrs(attrs, self.url))

    def reference_group(self) -> zarr.Group:
        """The store's root Zarr group (for `md.stores.reference`, which reads and writes
        its ``reference/`` subgroup); writable in mode ``r+``."""
        h = self._writable() if self.mode == "r+" else self._handle()
        return h.group

    # -- completeness -----------------------------------------------------------------------

    def written_mask(self) -> np.ndarray:
        """[N] bool, read fresh: True for samples of fully written shards."""
        h = self._handle()
        with self._errors(WRITTEN):
            mask = np.asarray(h.array(WRITTEN)[:], dtype=bool)
        h.known_written.update(k for k in range(self.num_shards) if mask[self.shard_range(k)].all())
        return mask

    def missing_shards(self) -> list[int]:
        mask = self.written_mask()
        return [k for k in range(self.num_shards) if not mask[self.shard_range(k)].all()]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def is_shard_written(self, k: int) -> bool:
        return not self._unwritten(self._handle(), [k])

    def _unwritten(self, h: Handle, shards: Sequence[int]) -> list[int]:
        """Shards among `shards` not written; reads `written` once per unknown shard."""
        unknown = [int(k) for k in shards if k not in h.known_written]
        if unknown:
            idx = np.concatenate(
                [np.arange(r.start, r.stop) for r in map(self.shard_range, unknown)]
            )
            with self._errors(WRITTEN):
                flags = np.asarray(h.array(WRITTEN).oindex[idx], dtype=bool)
            pos = 0
            for k in unknown:
                size = len(self.shard_range(k))
                if flags[pos : pos + size].all():
                    h.known_written.add(k)
                pos += size
        return [k for k in unknown if k not in h.known_written]

    # -- writing ----------------------------------------------------------------------------

    def write_shard(
        self,
        k: int,
        arrays: Mapping[str, np.ndarray],
        sample_ids: Sequence[str],
        groups: Sequence[str],
        *,
        overwrite: bool = False,
    ) -> int:
        """Write every array of shard k, then mark its samples written (one writer per shard);
        return the shard's stored bytes over every array (checksums and indexes included).

        `arrays` holds exactly `schema.target_shapes()` with a leading axis of
        ``len(shard_range(k))``: float32 ``features/L`` (quantized here), float
        ``attention/L`` in [0, 1], extras in their dtype. A written shard is refused unless
        `overwrite` (resuming writers skip written shards instead).
        """
        h = self._writable()
        rng = self.shard_range(k)
        where = f"{self.url}: shard {k} (samples {rng.start}-{rng.stop - 1})"
        if not overwrite and self.is_shard_written(k):
            raise StoreError(
                f"{where} is already written: skip it when resuming, or pass overwrite=True"
            )
        payload = encode_shard(h.schema, h.preset, arrays, len(rng), where)
        payload[SAMPLE_ID] = checked_strings(
            sample_ids, len(rng), "sample_ids", where, allow_empty=False
        )
        payload[GROUP] = checked_strings(groups, len(rng), "groups", where, allow_empty=True)
        sel = slice(rng.start, rng.stop)
        with self._errors(f"shard {k}", writing=True), h.store.writing():
            if overwrite:
                h.array(WRITTEN)[sel] = False
                h.known_written.discard(k)
            targets = h.open_arrays(list(payload))
            whole: list[tuple[zarr.Array, bytes]] = []  # (array, its encoded shard object)
            through_zarr: list[tuple[zarr.Array, np.ndarray]] = []
            for (name, value), arr in zip(payload.items(), targets, strict=True):
                layout = h.layout(name)
                if layout is None:
                    through_zarr.append((arr, value))
                else:
                    whole.append((arr, layout.encode(value)))
            raise_first(sync(write_arrays(k, sel, whole, through_zarr)))
            nbytes = self._write_record(h, k, sel, whole, [arr for arr, _ in through_zarr])
            h.array(WRITTEN)[sel] = True  # the commit: only after every array of the shard
        h.known_written.add(k)
        return nbytes + sync(object_sizes([h.array(WRITTEN)], k))[0]

    def _write_record(
        self,
        h: Handle,
        k: int,
        sel: slice,
        whole: Sequence[tuple[zarr.Array, bytes]],
        through_zarr: Sequence[zarr.Array],
    ) -> int:
        """Write shard k's ``shard_record`` (schema >= 2); return the stored bytes of the
        shard's objects so far. The objects zarr encoded are read back once for their crc32c
        (small: ids, groups, scales, box lists); the ones we encoded are at hand."""
        objects = {arr.path: obj for arr, obj in whole}
        objects.update(zip([a.path for a in through_zarr],
                           sync(object_bytes(through_zarr, k)), strict=True))  # fmt: skip
        nbytes = sum(len(obj) for obj in objects.values())
        if h.schema.version < RECORD_VERSION:
            return nbytes
        record = h.array(SHARD_RECORD)
        value = shard_record(h.identity, k, objects)
        record[sel] = np.array([value] * (sel.stop - sel.start), dtype=np.dtypes.StringDType())
        return nbytes + sync(object_sizes([record], k))[0]

    def _writable(self) -> Handle:
        if self.mode != "r+":
            raise StoreError(f"{self.url} is open read-only: open it with mode='r+' to write")
        return self._handle()

    # -- reading ----------------------------------------------------------------------------

    def read(
        self, indices: Sequence[int] | np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Samples by index -> {name: array} in the order of `indices` (duplicates allowed).

        Names are target names (``features/L`` float32 dequantized, ``attention/L`` float32
        in [0, 1], extras in their dtype) plus ``sample_id`` and ``group`` (str); all by
        default. Raises `IncompleteStoreError` if any sample's shard is not written.
        `read_stored` is the same read without the float32 decoding.
        """
        h = self._handle()
        names = list(names) if names is not None else [*h.schema.target_shapes(), *META_NAMES]
        stored = self.read_stored(indices, names)
        out = {}
        for name in names:
            with self._errors(name):
                out[name] = decode_target(name, stored, h.preset)
        return out

    def read_stored(
        self,
        indices: Sequence[int] | np.ndarray,
        names: Sequence[str] | None = None,
        *,
        alloc: Alloc | None = None,
    ) -> dict[str, np.ndarray]:
        """`read` without decoding to float32: {stored array name: values as stored}.

        For each target name its stored arrays (`stored_names`): ``features/L`` float16
        (lossless) or uint8 codes plus ``feature_scale/L`` uint8 [n, C] scale codes
        (quantized presets), ``attention/L`` uint8 (``round(m * 255)``), extras in their
        dtype; ``sample_id`` and ``group`` as str. `decode_target` (numpy) or
        `md.stores.device.decode_target` (torch, on any device) turn them into exactly what
        `read` returns. Every chunk's crc32c is verified; chunks of md's shard layout are
        decompressed straight into row j of one buffer per array, ``alloc(shape, dtype)``
        (numpy memory by default; pass page-locked memory to copy it to a GPU without another
        host copy), so nothing is stacked or cast on the host.
        """
        h = self._handle()
        idx = self._indices(indices)
        names = list(names) if names is not None else [*h.schema.target_shapes(), *META_NAMES]
        self._check_names(h, names)
        missing = self._unwritten(h, sorted({int(i) // self.shard_size for i in idx}))
        if missing:
            raise IncompleteStoreError(
                f"{self.url}: shards {missing} were never written (requested samples live there); "
                f"finish them (rerun md cache-teacher, which resumes) — `md store info {self.url}` lists them",
                missing,
            )
        uniq, inverse = np.unique(idx, return_inverse=True)
        stored = list(dict.fromkeys(s for name in names for s in stored_names(name, h.preset)))
        out = self._fetch(h, stored, uniq, inverse, alloc or _numpy_alloc)
        for name in stored:
            if name in META_NAMES:
                out[name] = np.array(out[name].tolist(), dtype=np.str_)
        return out

    def _fetch(
        self, h: Handle, stored: Sequence[str], uniq: np.ndarray, inverse: np.ndarray, alloc: Alloc
    ) -> dict[str, np.ndarray]:
        """Samples `uniq` of every stored array `stored`, all arrays at once, laid out in the
        order ``uniq[inverse]``.

        The reads are gathered on zarr's event loop, so a remote backend overlaps their round
        trips (bounded by its connection pool); every read runs to its end, then the first
        failure is raised as a one-line StoreError naming its array.
        """
        with self._errors(", ".join(stored)):
            arrays = h.open_arrays(stored)
        layouts = [h.layout(name) for name in stored]
        if h.store.local:  # md's shard layout read in this thread; the rest on zarr's loop
            rest = [j for j, lay in enumerate(layouts) if lay is None]
            results: list[Any] = [None] * len(stored)
            if rest:
                got = sync(read_arrays([arrays[j] for j in rest], [None] * len(rest), uniq))
                for j, r in zip(rest, got, strict=True):
                    results[j] = r
            for j, lay in enumerate(layouts):
                if lay is not None:
                    try:
                        results[j] = read_chunks_local(h.store, arrays[j], lay, uniq)
                    except (MissingChunkError, ValueError, OSError) as e:
                        results[j] = e
        else:
            results = sync(read_arrays(arrays, layouts, uniq))
        out: dict[str, np.ndarray] = {}
        for name, layout, result in zip(stored, layouts, results, strict=True):
            with self._errors(name):
                if isinstance(result, BaseException):
                    raise result
                if layout is None:
                    out[name] = np.asarray(result)[inverse]
                    continue
                # verified and decompressed here, off zarr's event loop, into the batch buffer
                buf = alloc((len(inverse), *layout.sample_shape), layout.dtype)
                first: dict[int, int] = {}
                for j, u in enumerate(inverse.tolist()):
                    if u in first:  # a duplicate index: decoded once
                        buf[j] = buf[first[u]]
                    else:
                        layout.decode_chunk_into(result[u], buf[j])
                        first[u] = j
                out[name] = buf
        return out

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise StoreError(
                f"{self.url}: indices must be a 1-D sequence of ints, got {idx.dtype} {idx.shape}"
            )
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= self.n)]
        if bad.size:
            raise StoreError(
                f"{self.url}: sample indices {bad[:5].tolist()} out of range [0, {self.n})"
            )
        return idx

    def _check_names(self, h: Handle, names: Sequence[str]) -> None:
        known = [*h.schema.target_shapes(), *META_NAMES]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StoreError(f"{self.url}: no arrays {unknown}; readable names are {known}")

    @contextlib.contextmanager
    def _errors(self, name: str, *, writing: bool = False) -> Iterator[None]:
        """Zarr/backend failures on `name` -> one-line StoreError naming store and fix (a
        failed write is a write: a full disk says so, not "cannot read")."""
        try:
            yield
        except MissingChunkError as e:
            raise StoreError(
                f"{self.url}: object {e.key} is missing although its shard is marked written; "
                f"the store is damaged: run `md store verify {self.url}` and rebuild that shard"
            ) from None
        except (ValueError, RuntimeError, OSError) as e:
            if writing:
                if isinstance(e, OSError):
                    raise write_error(self.url, name, e) from None
                raise StoreError(f"{self.url}: cannot write {name} ({e})") from None
            raise StoreError(
                f"{self.url}: cannot read {name} ({e}); run `md store verify {self.url}` to find the bad shard"
            ) from None


def open_store(url: str | os.PathLike[str], mode: Mode = "r") -> TargetStore:
    """Open an existing store ('r' read-only, 'r+' to write shards). Opens lazily."""
    ts = TargetStore(url, mode)
    _ = ts.schema  # fail now, with a clear error, if it is not a readable store
    return ts
