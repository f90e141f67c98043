"""Provenance of a cached store (group attributes, JSON) and refusal of foreign stores.

`identity_attrs` are what makes a store *this* run's store; a rerun resumes only if every
one of them is equal (`md.stores.open_or_create_store` checks). Keys:

- ``task``; ``levels``: [{name, stride, channels, height, width}] of the stored levels;
- ``teacher``: checkpoint file ``sha256`` (what student checkpoints point back to),
  ``weights_sha256``, ``model_kind``, ``model_args``, ``config`` (its training config),
  ``iteration``, ``train_dataset_sha256``, ``train_split``;
- ``dataset``: ``fingerprint`` (`md.data.dataset_fingerprint`: layout, task, sorted ids,
  per-file sha256, combined ``sha256``), ``order_sha256`` (of the ids in store order: a
  reordered list must not resume into a store laid out in the old order), ``split``,
  ``image_size`` [H, W];
- ``cache``: ``flip_views``, ``flip_frame``, ``bundle_inputs``, ``thermal_factor``,
  ``thermal_size`` [h, w], ``box_fields``, ``amp``.

The store itself adds ``schema_version``, ``schema``, ``codec`` (preset and quantization),
``created`` and ``tool_version``. `run_attrs` (``last_run``: paths, device, timings) are
informational and rewritten by every run; they never block a resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from md.errors import StoreError
from md.stores import StoreSchema, open_store
from md.stores.schema import BOXES
from md.teacher_cache.targets import BOX_FIELDS


def identity_attrs(
    *,
    schema: StoreSchema,
    strides: Mapping[str, int],
    ckpt: Mapping[str, Any],
    teacher_sha256: str,
    fingerprint: Mapping[str, Any],
    sample_ids: Sequence[str],
    split: str,
    image_size: tuple[int, int],
    thermal_size: tuple[int, int] | None,
    amp: str,
    thermal_factor: int,
) -> dict[str, Any]:
    """The attributes a resumed run must match (see the module docstring); plain JSON."""
    train_fp = ckpt.get("dataset_fingerprint") or {}
    attrs = {
        "task": schema.task,
        "levels": [
            {
                "name": lv.name,
                "stride": int(strides[lv.name]),
                "channels": lv.channels,
                "height": lv.height,
                "width": lv.width,
            }
            for lv in schema.levels
        ],
        "teacher": {
            "sha256": teacher_sha256,
            "weights_sha256": ckpt.get("weights_sha256"),
            "model_kind": ckpt.get("model_kind"),
            "model_args": ckpt.get("model_args"),
            "config": ckpt.get("config"),
            "iteration": ckpt.get("iteration"),
            "train_dataset_sha256": train_fp.get("sha256"),
            "train_split": ckpt.get("split"),
        },
        "dataset": {
            "fingerprint": dict(fingerprint),
            "order_sha256": order_sha256(sample_ids),
            "split": split,
            "image_size": list(image_size),
        },
        "cache": {
            "flip_views": schema.flips,
            "flip_frame": "mirrored" if schema.flips else None,
            "bundle_inputs": thermal_size is not None,
            "thermal_factor": thermal_factor if thermal_size is not None else None,
            "thermal_size": list(thermal_size) if thermal_size is not None else None,
            "box_fields": list(BOX_FIELDS) if any(e.name == BOXES for e in schema.extras) else None,
            "amp": amp,
        },
    }
    return dict(json.loads(json.dumps(attrs)))  # tuples -> lists, as stored


def order_sha256(sample_ids: Sequence[str]) -> str:
    """sha256 of the sample ids in store order, one per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in sample_ids).encode()).hexdigest()


def explain_refusal(
    url: str, schema: StoreSchema, attrs: Mapping[str, Any], teacher_path: str, data: str
) -> None:
    """Raise a one-line `StoreError` naming why the existing store at `url` is not this
    run's (another teacher, other data, other options); return if it cannot tell."""
    try:
        with open_store(url) as ts:
            stored, stored_schema = ts.attrs, ts.schema
    except StoreError:
        return
    fix = "pass --overwrite to replace it, or choose another --store"
    old_t, new_t = stored.get("teacher") or {}, attrs["teacher"]
    if old_t.get("sha256") != new_t["sha256"]:
        raise StoreError(
            f"{url} holds targets of another teacher (checkpoint sha256 "
            f"{str(old_t.get('sha256'))[:12]}, not {teacher_path}: {new_t['sha256'][:12]}); {fix}"
        )
    old_d, new_d = stored.get("dataset") or {}, attrs["dataset"]
    old_sha = (old_d.get("fingerprint") or {}).get("sha256")
    if (
        old_sha != new_d["fingerprint"]["sha256"]
        or old_d.get("split") != new_d["split"]
        or old_d.get("order_sha256") != new_d["order_sha256"]
    ):
        raise StoreError(
            f"{url} was cached from other data or another sample order (split "
            f"{old_d.get('split')!r}, fingerprint "
            f"{str(old_sha)[:12]}), not {data} split {new_d['split']!r} "
            f"({new_d['fingerprint']['sha256'][:12]}); {fix}"
        )
    diffs = _schema_diffs(stored_schema, schema) + [
        key for key in attrs if key not in ("teacher", "dataset") and stored.get(key) != attrs[key]
    ]
    if diffs:
        raise StoreError(
            f"{url} was made with other options ({'; '.join(diffs)}); rerun with the same "
            f"options to resume, or {fix}"
        )


def _schema_diffs(old: StoreSchema, new: StoreSchema) -> list[str]:
    a, b = old.to_json(), new.to_json()
    out = []
    for key in ("codec", "shard_size", "n", "flips", "task"):
        if a[key] != b[key]:
            out.append(f"{key} {a[key]} -> {b[key]}")
    if a["levels"] != b["levels"]:
        out.append(
            f"levels {[lv['name'] for lv in a['levels']]} -> {[lv['name'] for lv in b['levels']]}"
        )
    if a["extras"] != b["extras"]:
        out.append(
            f"bundled arrays {[e['name'] for e in a['extras']]} -> "
            f"{[e['name'] for e in b['extras']]}"
        )
    return out
