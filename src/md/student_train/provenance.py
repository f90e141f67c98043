"""Checks that a target store fits the student run, and the lineage a student records.

Every refusal is one line naming the store (or dataset) and the fix: a store for another
task, with another level set or channel count, an incomplete store, a store built for other
data (dataset fingerprint or sample ids differ), bundled inputs at another thermal factor.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from md.data import PairedDataset
from md.errors import StoreError
from md.stores import LevelSpec, StoreSchema, TargetStore
from md.stores.schema import BOXES, INPUT_THERMAL, INPUT_VISIBLE, LABELS, NUM_BOXES

INPUT_NAMES = (INPUT_VISIBLE, INPUT_THERMAL)


def store_levels(store: TargetStore, levels: Sequence[str]) -> dict[str, LevelSpec]:
    """Student level (``c3``) -> the store's level spec (named ``c3`` or ``C3``).

    Raises when the store lacks one of `levels`: a store made with another level set.
    """
    by_name = {lv.name.lower(): lv for lv in store.schema.levels}
    missing = [lv for lv in levels if lv not in by_name]
    if missing:
        have = ",".join(sorted(by_name))
        raise StoreError(
            f"{store.url}: the store has levels [{have}] but the student distils {list(levels)}; "
            f"pass levels=[{have}] (or a subset), or cache the teacher at those levels"
        )
    return {lv: by_name[lv] for lv in levels}


def width_from_store(
    store: TargetStore, specs: Mapping[str, LevelSpec], base: Mapping[str, int]
) -> float:
    """The trunk width whose level channels equal the store's (c3 = 128·w, c4 = 256·w, ...),
    from the widest level (narrow levels may be clamped at 8 channels); `check_store_shapes`
    then checks every level against the model built with it."""
    lv = max(specs, key=lambda name: specs[name].channels)
    return specs[lv].channels / base[lv]


def check_store_shapes(
    store: TargetStore,
    specs: Mapping[str, LevelSpec],
    channels: Mapping[str, int],
    strides: Mapping[str, int],
    image_hw: tuple[int, int],
) -> None:
    """The student's level channels / strides / map sizes on `image_hw` equal the store's."""
    for lv, spec in specs.items():
        want = (
            channels[lv],
            strides[lv],
            -(-image_hw[0] // strides[lv]),
            -(-image_hw[1] // strides[lv]),
        )
        got = (spec.channels, spec.stride, spec.height, spec.width)
        if got[:2] != want[:2]:
            raise StoreError(
                f"{store.url}: level {spec.name} holds {spec.channels} channels at stride "
                f"{spec.stride}, the student gives {want[0]} at stride {want[1]}; pass the "
                f"teacher's width (width=0 derives it from the store)"
            )
        if got[2:] != want[2:]:
            raise StoreError(
                f"{store.url}: level {spec.name} maps are {spec.height}x{spec.width}, but "
                f"{image_hw[1]}x{image_hw[0]} images give {want[2]}x{want[3]}; the store was "
                "made for images of another size: use the data it was cached from"
            )


def written_rows(store: TargetStore, allow_partial: bool) -> np.ndarray:
    """Sample indices to train on: all, or with `allow_partial` the written ones only."""
    mask = store.written_mask()
    missing = [k for k in range(store.num_shards) if not mask[store.shard_range(k)].all()]
    if missing and not allow_partial:
        raise StoreError(
            f"{store.url}: incomplete store, shards {missing} of {store.num_shards} were never "
            "written; finish it (rerun md cache-teacher) or pass --allow-partial to train on "
            "the written samples only"
        )
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        raise StoreError(f"{store.url}: no shard is written yet; run md cache-teacher first")
    return rows


def recorded_dataset_sha256(attrs: Mapping[str, Any]) -> str | None:
    """The dataset fingerprint's sha256 recorded in the store's provenance, if any."""
    for key in ("dataset", "dataset_fingerprint"):
        d = attrs.get(key)
        if isinstance(d, Mapping):
            for cand in (d.get("fingerprint"), d.get("sha256"), d.get("dataset_fingerprint")):
                if isinstance(cand, Mapping) and isinstance(cand.get("sha256"), str):
                    return str(cand["sha256"])
                if isinstance(cand, str):
                    return cand
    return None


def recorded_teacher_sha256(attrs: Mapping[str, Any]) -> str | None:
    """The teacher checkpoint's sha256 recorded in the store's provenance, if any."""
    t = attrs.get("teacher")
    if isinstance(t, Mapping):
        for key in ("sha256", "checkpoint_sha256", "file_sha256"):
            if isinstance(t.get(key), str):
                return str(t[key])
    return attrs.get("teacher_sha256") if isinstance(attrs.get("teacher_sha256"), str) else None


def match_dataset(
    store: TargetStore, rows: np.ndarray, ds: PairedDataset, fingerprint: Mapping[str, Any]
) -> np.ndarray:
    """Dataset index of each store row; refuses a store built for other data.

    The fingerprint recorded in the store must equal the dataset's, and every sample id of
    `rows` must be in the dataset.
    """
    recorded = recorded_dataset_sha256(store.attrs)
    if recorded is not None and recorded != fingerprint["sha256"]:
        raise StoreError(
            f"{store.url}: built for another dataset (fingerprint {recorded[:12]}…, "
            f"{ds.root} split {ds.split!r} is {fingerprint['sha256'][:12]}…); pass the data and "
            "split the store was cached from, or cache the teacher on this data"
        )
    ids = store.read(rows, names=["sample_id"])["sample_id"]
    index = {s.id: i for i, s in enumerate(ds.samples)}
    unknown = [str(i) for i in ids if str(i) not in index]
    if unknown:
        raise StoreError(
            f"{store.url}: sample ids {unknown[:3]} ({len(unknown)} of {len(ids)}) are not in "
            f"{ds.root} split {ds.split!r}; pass the data the store was cached from"
        )
    return np.array([index[str(i)] for i in ids], dtype=np.int64)


def row_meta(store: TargetStore, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(store.n,) sample ids and groups ("" for rows not read), read once for the run."""
    got = store.read(rows, names=["sample_id", "group"])
    ids, groups = np.full(store.n, "", dtype=object), np.full(store.n, "", dtype=object)
    ids[rows], groups[rows] = got["sample_id"], got["group"]
    return ids, groups


def bundled_inputs(schema: StoreSchema) -> bool:
    names = {e.name for e in schema.extras}
    return all(n in names for n in INPUT_NAMES)


def bundled_labels(schema: StoreSchema) -> bool:
    names = {e.name for e in schema.extras}
    return LABELS in names or {BOXES, NUM_BOXES} <= names


def bundled_image_hw(schema: StoreSchema) -> tuple[int, int]:
    shape = {e.name: e.shape for e in schema.extras}[INPUT_VISIBLE]
    return int(shape[-2]), int(shape[-1])


def bundled_thermal_factor(store: TargetStore) -> int:
    """Pixel factor of the bundled thermal: (H / h)², from the array shapes."""
    shapes = {e.name: e.shape for e in store.schema.extras}
    (vh, vw), (th, tw) = shapes[INPUT_VISIBLE][-2:], shapes[INPUT_THERMAL][-2:]
    for side in (1, 2, 4, 8):
        if (max(1, vh // side), max(1, vw // side)) == (th, tw):
            return side * side
    raise StoreError(
        f"{store.url}: bundled thermal {tw}x{th} is no 1/4/16/64 reduction of "
        f"the {vw}x{vh} visible images; rebuild the store"
    )


def check_thermal_factor(store: TargetStore, factor: int | None) -> None:
    """Bundled thermal must be at the run's factor (visible-only runs ignore it)."""
    if factor is None:
        return
    have = bundled_thermal_factor(store)
    if have != factor:
        raise StoreError(
            f"{store.url}: bundled thermal images are reduced by {have}, not by {factor}; pass "
            f"--thermal-factor {have}, or use a store cached with --thermal-factor {factor}"
        )


def store_lineage(store: TargetStore, rows: np.ndarray) -> dict[str, Any]:
    """What a student checkpoint records about the store it learned from (JSON)."""
    attrs = store.attrs
    # `last_run` (paths, timings of the latest cache run) is informational: left out, so
    # the same targets hash the same wherever and however often they were (re)written.
    identity = {k: v for k, v in attrs.items() if k != "last_run"}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return {
        "url": store.url,
        "attrs_sha256": hashlib.sha256(canonical).hexdigest(),  # same for dir and packed zip
        "dataset_sha256": recorded_dataset_sha256(attrs),
        "teacher_sha256": recorded_teacher_sha256(attrs),
        "schema": store.schema.to_json(),
        "split": _section(attrs, "dataset").get("split"),
        "created": attrs.get("created"),
        "tool_version": attrs.get("tool_version"),
        "samples_used": int(rows.size),
        "codec": attrs.get("codec"),
        "manifest_sha256": manifest_sha256(store.url),  # a packed zip's; None otherwise
    }


def manifest_sha256(url: str) -> str | None:
    """sha256 of the ``md_manifest.json`` of a local packed store (None: not a packed zip)."""
    path = Path(url)
    if "://" in url or not path.is_file() or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        if "md_manifest.json" not in zf.namelist():
            return None
        return hashlib.sha256(zf.read("md_manifest.json")).hexdigest()


def _section(attrs: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = attrs.get(key)
    return value if isinstance(value, Mapping) else {}


def recorded_fingerprint(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dataset fingerprint dict recorded by md cache-teacher (``dataset.fingerprint``)."""
    fp = _section(attrs, "dataset").get("fingerprint")
    return dict(fp) if isinstance(fp, Mapping) else None
