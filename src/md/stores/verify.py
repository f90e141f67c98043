"""`verify`: read every chunk of a store and report what is wrong, by shard and sample.

Checks, in order: the zip manifest (packed stores; a zip with compressed members is refused
unread, as `md store pack` never writes one), array metadata against the schema
(shape, dtype, chunks/shards, crc32c present), completeness (``written``), then for every
written shard every stored array is read (crc32c checksums, missing objects) and checked for
NaN/Inf (features, scales) and empty/duplicate sample ids. A failing shard is re-read sample
by sample so the report names the bad samples. Unwritten shards are reported, not read.
Last, each clean written shard's ``shard_record`` (schema version >= 2) is checked: written
by this store's run (its identity equals the root's, which must match the root provenance)
and every object is the one written with it (crc32c of the whole object), so a shard of
another run or an object copied in from another shard or store is caught though its own
checksums pass.
A backend failure (no credentials, endpoint unreachable: `StoreAccessError`) is no finding
about the data: it is raised, not reported shard by shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from md.errors import StoreError
from md.stores.arrays import array_mismatches, shard_object_key
from md.stores.backends import MissingChunkError, StoreAccessError, parse_location
from md.stores.codecs import decode_features
from md.stores.encode import object_crc, run_identity
from md.stores.pack import check_manifest
from md.stores.schema import (
    RECORD_VERSION,
    SAMPLE_ID,
    SHARD_RECORD,
    WRITTEN,
    ArraySpec,
    scale_array_name,
)
from md.stores.target_store import TargetStore, open_store


@dataclass
class VerifyReport:
    """What `verify` found; `ok` only if complete and nothing is wrong."""

    url: str
    samples: int = 0
    num_shards: int = 0
    missing_shards: list[int] = field(default_factory=list)
    bad_shards: list[int] = field(default_factory=list)
    bad_samples: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each, naming array/shard/sample
    chunks_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing_shards

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def add(self, problem: str, shard: int | None = None, samples: list[int] | None = None) -> None:
        self.problems.append(problem)
        if shard is not None and shard not in self.bad_shards:
            self.bad_shards.append(shard)
        self.bad_samples.extend(s for s in samples or [] if s not in self.bad_samples)


def _open_all_arrays(ts: TargetStore) -> None:
    """Open every array in one concurrent round (else `_check_metadata` opens them one by one,
    a request round each on a remote store). An array that does not open is not an error
    here: `_check_metadata` reports it by name; only a failed access to the store is raised."""
    try:
        ts.raw_arrays(ts.raw_names(), check=False)
    except StoreAccessError:
        raise
    except Exception:
        return


def verify(url: str | os.PathLike[str]) -> VerifyReport:
    """Verify the store at `url` (directory, packed zip or fsspec URL such as s3://).

    Raises StoreError if it cannot be opened or the backend fails (StoreAccessError).
    """
    loc = parse_location(url)
    report = VerifyReport(loc.url)
    if loc.kind == "zip":
        for problem in check_manifest(loc.path):
            report.add(f"manifest: {problem}")
    with open_store(url, mode="r") as ts:
        report.samples, report.num_shards = ts.n, ts.num_shards
        _open_all_arrays(ts)
        specs = [s for s in ts.schema.stored_arrays() if _check_metadata(ts, s, report)]
        written, report.missing_shards = _written_shards(ts, report)
        if report.missing_shards:
            report.add(f"incomplete: shards {report.missing_shards} were never written")
        for k in written:
            for spec in specs:
                _check_shard(ts, spec, k, report)
        _check_ids(ts, written, report)
        if ts.schema.version >= RECORD_VERSION:
            _check_records(ts, [k for k in written if k not in report.bad_shards], report, specs)
    report.bad_shards.sort()
    report.bad_samples.sort()
    return report


def _written_shards(ts: TargetStore, report: VerifyReport) -> tuple[list[int], list[int]]:
    """(written, missing) shards by their ``written`` flags, read shard by shard: a damaged
    flag chunk is a finding for that shard (neither written nor missing), not a failure of
    verify itself."""
    written: list[int] = []
    missing: list[int] = []
    for k in range(ts.num_shards):
        rng = ts.shard_range(k)
        try:
            flags = np.asarray(ts.raw_array(WRITTEN, check=False)[rng.start : rng.stop])
        except StoreAccessError:
            raise
        except Exception as e:
            report.add(
                f"shard {k} (samples {rng.start}-{rng.stop - 1}): written: cannot read its "
                f"written flags ({type(e).__name__}: {e}); the record of finished shards is "
                "damaged: cache the store again with --overwrite",
                shard=k,
                samples=list(rng),
            )
            continue
        (written if flags.all() else missing).append(k)
    return written, missing


def _check_metadata(ts: TargetStore, spec: ArraySpec, report: VerifyReport) -> bool:
    try:
        arr = ts.raw_array(spec.name, check=False)
    except StoreAccessError:  # the backend failed, not the data: stop, say why
        raise
    except Exception as e:  # any failure to open is a finding, not a crash
        report.add(f"{spec.name}: cannot open array ({type(e).__name__}: {e})")
        return False
    bad = array_mismatches(spec, arr, ts.schema)
    if not any(isinstance(c, Crc32cCodec) for c in arr.compressors):
        bad.append("no crc32c checksum codec")
    for b in bad:
        report.add(f"{spec.name}: {b}")
    return not bad


def _check_shard(ts: TargetStore, spec: ArraySpec, k: int, report: VerifyReport) -> None:
    rng = ts.shard_range(k)
    where = f"shard {k} (samples {rng.start}-{rng.stop - 1}): {spec.name}"
    arr = ts.raw_array(spec.name, check=False)
    report.chunks_checked += len(rng) if spec.sharded else 1
    try:
        values = arr[rng.start : rng.stop]
    except StoreAccessError:
        raise
    except Exception as e:
        _locate_bad_samples(ts, arr, spec, k, e, report)
        return
    bad = _bad_values(ts, spec, k, np.asarray(values))
    if bad:
        ids = [rng.start + int(i) for i in bad]
        report.add(f"{where}: NaN/Inf in samples {_named(ts, ids)}", k, ids)


def _bad_values(ts: TargetStore, spec: ArraySpec, k: int, values: np.ndarray) -> list[int]:
    """Positions (within the shard) of samples with NaN/Inf after decoding."""
    if spec.role == "features":
        scale = None
        if ts.preset.quantized:
            try:
                rng = ts.shard_range(k)
                scale = np.asarray(
                    ts.raw_array(scale_array_name(spec.name), check=False)[rng.start : rng.stop]
                )
            except StoreAccessError:
                raise
            except Exception:
                return []  # the scale array's own check reports it
        values = decode_features(values, scale, ts.preset)
    if values.dtype.kind != "f":
        return []
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if spec.role == "scale":
        finite &= (values.reshape(len(values), -1) >= 0).all(axis=1)
    return [int(i) for i in np.flatnonzero(~finite)]


def _locate_bad_samples(
    ts: TargetStore,
    arr: zarr.Array,
    spec: ArraySpec,
    k: int,
    error: Exception,
    report: VerifyReport,
) -> None:
    rng = ts.shard_range(k)
    where = f"shard {k} (samples {rng.start}-{rng.stop - 1}): {spec.name}"
    if not spec.sharded:  # one chunk holds the whole shard: every sample is affected
        report.add(f"{where}: {_describe(error)}", k, list(rng))
        return
    bad: list[int] = []
    for i in rng:
        try:
            arr[i : i + 1]
        except StoreAccessError:
            raise
        except Exception:
            bad.append(i)
    if not bad or len(bad) == len(rng):
        report.add(f"{where}: {_describe(error)} (whole shard: index or every chunk)", k, list(rng))
    else:
        report.add(f"{where}: {_describe(error)} in samples {_named(ts, bad)}", k, bad)


def _describe(error: Exception) -> str:
    if isinstance(error, MissingChunkError):
        return f"object {error.key} is missing though the shard is marked written"
    if "checksum" in str(error).lower() or "crc" in str(error).lower():
        return "crc32c checksum mismatch"
    return f"cannot decode ({type(error).__name__}: {error})"


def _named(ts: TargetStore, indices: list[int]) -> str:
    """'5 (set06/V000/I00019), 7 (...)' where sample ids are readable."""
    try:
        ids = np.asarray(ts.raw_array(SAMPLE_ID, check=False).oindex[np.asarray(indices)]).tolist()
        return ", ".join(f"{i} ({s})" for i, s in zip(indices, ids, strict=True))
    except StoreAccessError:
        raise
    except Exception:
        return ", ".join(str(i) for i in indices)


def _check_ids(ts: TargetStore, written: list[int], report: VerifyReport) -> None:
    seen: dict[str, int] = {}
    for k in written:
        rng = ts.shard_range(k)
        try:
            ids = np.asarray(ts.raw_array(SAMPLE_ID, check=False)[rng.start : rng.stop]).tolist()
        except StoreAccessError:
            raise
        except Exception:
            continue  # reported by the per-array check
        for i, sid in zip(rng, ids, strict=True):
            if not sid:
                report.add(f"shard {k}: sample {i} has an empty sample_id", k, [i])
            elif sid in seen:
                report.add(
                    f"shard {k}: sample {i} repeats sample_id {sid!r} of sample {seen[sid]}", k, [i]
                )
            else:
                seen[sid] = i


_REFETCH = "re-copy the store from its source, or rebuild it (md cache-teacher --overwrite)"


def _check_records(
    ts: TargetStore, shards: list[int], report: VerifyReport, specs: list[ArraySpec]
) -> None:
    """Each shard's record names this store's run, and its objects are the ones written
    (arrays in `specs`: those whose metadata passed; the others are reported already)."""
    identity = _root_identity(ts, report)
    if identity is None:
        return
    names = [s.name for s in specs if s.name not in (SHARD_RECORD, WRITTEN)]
    for k in shards:
        record = _read_record(ts, k, report)
        if record is None:
            continue
        if record.get("identity") != identity or record.get("shard") != k:
            report.add(
                f"shard {k}: written by another run or copied from another shard (its record "
                f"says identity {str(record.get('identity'))[:12]}, shard {record.get('shard')}; "
                f"this store is {identity[:12]}): {_REFETCH}",
                k,
                list(ts.shard_range(k)),
            )
            continue
        crcs = record.get("objects", {})
        for name in names:
            arr = ts.raw_array(name, check=False)
            key = shard_object_key(arr, k)
            try:
                buf = sync(arr.store_path.store.get(key, default_buffer_prototype()))
            except MissingChunkError:
                buf = None  # reported by the shard's checks; its crc is "None" here
            except StoreAccessError:
                raise
            except StoreError as e:  # e.g. a symbolic link: reported, not followed
                report.add(f"shard {k}: {name}: {e}", k, list(ts.shard_range(k)))
                continue
            got = None if buf is None else object_crc(buf.to_bytes())
            if got != crcs.get(name):
                report.add(
                    f"shard {k}: {name}: object {key} is not the one written with the shard "
                    f"(crc32c {got}, recorded {crcs.get(name)}): swapped in from another shard "
                    f"or store? {_REFETCH}",
                    k,
                    list(ts.shard_range(k)),
                )


def _root_identity(ts: TargetStore, report: VerifyReport) -> str | None:
    """The root's run identity, checked against the provenance it was computed from."""
    attrs = ts.attrs
    ident = attrs.get("identity")
    if not isinstance(ident, dict) or not isinstance(ident.get("keys"), list):
        report.add(f"root attributes: no run identity: {_REFETCH}")
        return None
    keys = [str(key) for key in ident["keys"]]
    missing = [key for key in keys if key not in attrs]
    want = run_identity({key: attrs[key] for key in keys if key in attrs})["sha256"]
    if missing or want != ident.get("sha256"):
        report.add(
            f"root attributes: provenance {missing or keys} does not match the store's run "
            f"identity (rewritten by another run?): {_REFETCH}"
        )
        return None
    return str(ident["sha256"])


def _read_record(ts: TargetStore, k: int, report: VerifyReport) -> dict[str, Any] | None:
    rng = ts.shard_range(k)
    try:
        values = set(
            np.asarray(ts.raw_array(SHARD_RECORD, check=False)[rng.start : rng.stop]).tolist()
        )
        (text,) = values
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        return record
    except StoreAccessError:
        raise
    except Exception as e:
        report.add(f"shard {k}: shard_record unreadable ({type(e).__name__}): {_REFETCH}", k,
                   list(rng))  # fmt: skip
        return None
