"""A dataset fingerprint in a store: a small summary in the root attributes, the per-file
sha256s in an array beside them.

`md.data.dataset_fingerprint` lists every sample id and the sha256 of each of its files:
about 420 B per sample, ~10 MB of root ``zarr.json`` at KAIST scale (25k frames), read by
every process that opens the store. Provenance handed to `create_store` /
`open_or_create_store` under ``dataset.fingerprint`` is therefore stored split:

- root attributes: ``dataset.fingerprint`` = ``layout``, ``task``, ``num_samples``, the
  combined ``sha256`` (unchanged, so resume and lineage checks compare it as before),
  ``ids_sha256`` and ``files`` = ``{"array": "dataset_fingerprint_files", "entries": N}``;
- the 1-D string array ``dataset_fingerprint_files`` (dimension ``dataset_file``), one
  entry ``"<id>\\t<role>\\t<sha256>"`` per file, sorted by id then role: exactly the lines
  the combined sha256 is computed over, so a reader checks the array against the summary.

`read_fingerprint` rebuilds the full fingerprint (ids and per-file sha256s) and checks it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from md.errors import StoreError

FILES_ARRAY = "dataset_fingerprint_files"
FILES_DIM = "dataset_file"
_CHUNK = 8192  # entries per chunk (~0.8 MB of text before zstd)
_PREFIX = "md-dataset-v1"  # md.data.layout.dataset_fingerprint's combined-hash header


def is_full_fingerprint(fp: Any) -> bool:
    """Whether `fp` is `md.data.dataset_fingerprint`'s full form (per-file sha256s inline)."""
    return (
        isinstance(fp, Mapping)
        and isinstance(fp.get("files"), Mapping)
        and "array" not in fp["files"]
        and isinstance(fp.get("ids"), list)
    )


def fingerprint_lines(fp: Mapping[str, Any]) -> list[str]:
    """``id\\trole\\tsha256`` per file, sorted by id then role (the combined hash's lines)."""
    files = fp["files"]
    return [f"{i}\t{role}\t{files[i][role]}" for i in sorted(files) for role in sorted(files[i])]


def combined_sha256(layout: str, lines: Sequence[str]) -> str:
    digest = hashlib.sha256(f"{_PREFIX}\n{layout}\n".encode())
    for line in lines:
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()


def ids_sha256(ids: Sequence[str]) -> str:
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def split_provenance(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """Provenance as the root stores it (the fingerprint summarised) and the per-file lines
    for `FILES_ARRAY` (None when `attrs` holds no full fingerprint)."""
    out = dict(attrs)
    dataset = out.get("dataset")
    fp = dataset.get("fingerprint") if isinstance(dataset, Mapping) else None
    if not is_full_fingerprint(fp):
        return out, None
    assert isinstance(dataset, Mapping) and isinstance(fp, Mapping)
    lines = fingerprint_lines(fp)
    summary = {k: copy.deepcopy(v) for k, v in fp.items() if k not in ("ids", "files")}
    summary["ids_sha256"] = ids_sha256(list(fp["ids"]))
    summary["files"] = {"array": FILES_ARRAY, "entries": len(lines)}
    out["dataset"] = {**dataset, "fingerprint": summary}
    return out, lines


def create_files_array(group: zarr.Group, lines: Sequence[str], compressors: Any) -> None:
    """Write `lines` as the string array `FILES_ARRAY` of `group` (a new store's layout)."""
    arr = group.create_array(
        FILES_ARRAY,
        shape=(len(lines),),
        dtype=str,
        chunks=(min(_CHUNK, max(1, len(lines))),),
        compressors=compressors,
        fill_value="",
        dimension_names=(FILES_DIM,),
        attributes={
            "long_name": "sha256 of each file of the cached dataset: 'id<TAB>role<TAB>sha256'",
            "md_summary": "root attribute dataset.fingerprint (its sha256 covers these lines)",
        },
    )
    if lines:
        arr[:] = np.array(list(lines), dtype=np.dtypes.StringDType())


def read_fingerprint(group: zarr.Group, attrs: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The full dataset fingerprint recorded in a store (ids, per-file sha256s, sha256),
    checked against the summary's combined sha256; a store that kept it inline returns it."""
    dataset = attrs.get("dataset")
    fp = dataset.get("fingerprint") if isinstance(dataset, Mapping) else None
    if not isinstance(fp, Mapping):
        raise StoreError(f"{url}: no dataset fingerprint in the store's provenance")
    if is_full_fingerprint(fp):
        return dict(fp)
    try:
        arr = group[FILES_ARRAY]
        if not isinstance(arr, zarr.Array):
            raise KeyError(f"{FILES_ARRAY} is a group")
        lines = [str(s) for s in np.asarray(arr[:]).tolist()]
    except (KeyError, FileNotFoundError) as e:
        raise StoreError(
            f"{url}: array {FILES_ARRAY} is missing ({e}); the store is damaged: fetch it "
            "again (md store sync copies what is missing)"
        ) from None
    if combined_sha256(str(fp.get("layout")), lines) != fp.get("sha256"):
        raise StoreError(
            f"{url}: {FILES_ARRAY} does not match the fingerprint sha256 in the root "
            "attributes; the store is damaged: fetch it again with md store sync"
        )
    files: dict[str, dict[str, str]] = {}
    for line in lines:
        i, role, sha = line.split("\t")
        files.setdefault(i, {})[role] = sha
    if ids_sha256(sorted(files)) != fp.get("ids_sha256"):
        raise StoreError(
            f"{url}: the sample ids of {FILES_ARRAY} do not match the fingerprint's "
            "ids_sha256; the store is damaged: fetch it again with md store sync"
        )
    full = {k: v for k, v in fp.items() if k not in ("files", "ids_sha256")}
    full["ids"] = sorted(files)
    full["files"] = files
    return full
