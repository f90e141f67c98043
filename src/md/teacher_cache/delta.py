"""Delta stores (`md cache-teacher --ids REQUEST`): the teacher's targets for the frames a
gateway asked for, in a store of the base store's schema (levels, codec, flips, bundled
arrays; only the sample count differs) whose ``lineage`` attribute points at the base.

``lineage``: ``kind`` = ``delta``, ``base_store`` (URL), ``base_attrs_sha256`` (the hash
`md train-student` records for a store, `md.student_train`'s lineage), ``base_schema``,
``request_sha256`` and ``selected_by`` of the request file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from md.data import PairedDataset, open_dataset
from md.data.layout import sha256_file
from md.data.request import read_request, request_ids
from md.errors import ConfigError, DataError
from md.stores import StoreSchema, TargetStore, open_store
from md.stores.schema import BOXES
from md.teacher_cache.shards import ShardOptions


def attrs_sha256(store: TargetStore) -> str:
    """Hash of a store's attributes without ``last_run`` (as student lineage records it)."""
    identity = {k: v for k, v in store.attrs.items() if k != "last_run"}
    return hashlib.sha256(
        json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def open_request_dataset(data: str, request: str) -> tuple[PairedDataset, dict[str, Any]]:
    """The requested frames of the hub's dataset, in request order; their files must be the
    ones the gateway hashed."""
    doc = read_request(request)
    ids = request_ids(doc)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "request.txt"
        listing.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        ds = open_dataset(data, list_file=listing)
    for sample, frame in zip(ds.samples, doc["frames"], strict=True):
        paths = {"visible": sample.visible_path, "thermal": sample.thermal_path}
        for role, want in (frame.get("files") or {}).items():
            sha = want.get("sha256")
            if sha and role in paths and sha256_file(paths[role]) != sha:
                raise DataError(
                    f"{paths[role]}: differs from the {role} frame of {frame['id']} in "
                    f"{request} (sha256 {sha[:12]}…); ship the gateway's frame to the hub"
                )
    return ds, doc


def base_options(base: TargetStore, opts: ShardOptions) -> ShardOptions:
    """The delta's shard options with the base's padded box rows (same array shapes)."""
    spec = base.schema.array_spec(BOXES)
    if spec is None or not opts.max_boxes:
        return opts
    rows = spec.sample_shape[0]
    if opts.max_boxes > rows:
        raise DataError(
            f"a requested frame has {opts.max_boxes} boxes, more than the {rows} rows of the "
            f"base store {base.url}; re-cache the base store with these frames instead"
        )
    return replace(opts, max_boxes=rows)


def check_same_schema(base: TargetStore, delta: StoreSchema) -> None:
    """The delta must lay out every array as the base does (only n may differ)."""
    a, b = base.schema.to_json(), delta.to_json()
    diffs = [k for k in a if k != "n" and a[k] != b[k]]
    if diffs:
        raise ConfigError(
            f"{base.url}: the delta store would differ from its base in {', '.join(diffs)}; "
            "pass the base's --levels, --codec, --flip-views, --bundle-inputs and "
            "--thermal-factor"
        )


def lineage(base: TargetStore, request: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "delta",
        "base_store": base.url,
        "base_attrs_sha256": attrs_sha256(base),
        "base_schema": base.schema.to_json(),
        "request_sha256": sha256_file(Path(request)),
        "selected_by": doc.get("selected_by"),
        "frames": len(doc["frames"]),
    }


def open_base(cfg_base: str, doc: dict[str, Any]) -> TargetStore:
    url = cfg_base or str(doc.get("base_store") or "")
    if not url:
        raise ConfigError("the request names no base store; pass --base-store BASE")
    return open_store(url)
