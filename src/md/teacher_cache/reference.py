"""Reference statistics of a freshly cached store (`md.stores.reference`): the inputs of the
statistics and held-out frames are read from the dataset, their features from the store."""

from __future__ import annotations

from typing import Any

import numpy as np

from md.data import PairedDataset
from md.stores import TargetStore
from md.stores.reference import (
    REFERENCE_GROUP,
    REFERENCE_VERSION,
    build,
    luma,
    reference_indices,
    write_reference,
)
from md.stores.schema import features_name


def input_planes(item: dict[str, Any]) -> dict[str, np.ndarray]:
    """{"visible": [H, W] luma, "thermal": [H, W]} in [0, 1] of a dataset item."""
    return {
        "visible": luma(item["visible"].numpy()),
        "thermal": np.asarray(item["thermal"].numpy()[0], dtype=np.float64),
    }


def record_reference(ds: PairedDataset, store: TargetStore) -> dict[str, Any]:
    """Compute and write the store's ``reference/`` group and its root attribute entry;
    returns that entry. The store must be complete."""
    ref_idx, held_idx = reference_indices(store.n)
    wanted = sorted(set(ref_idx) | set(held_idx))
    frames = {i: input_planes(ds[i]) for i in wanted}
    names = [features_name(lv.name) for lv in store.schema.levels]
    features: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(wanted), 64):  # bounded memory at KAIST scale
        chunk = wanted[start : start + 64]
        got = store.read(chunk, names)
        for j, i in enumerate(chunk):
            features[i] = {lv.name: got[features_name(lv.name)][j] for lv in store.schema.levels}
    ref = build(frames, features, ref_idx, held_idx)
    nbytes = write_reference(store.reference_group(), ref)
    entry = {
        "version": REFERENCE_VERSION,
        "group": REFERENCE_GROUP,
        "bytes": nbytes,
        "reference_samples": len(ref_idx),
        "heldout_samples": len(held_idx),
    }
    store.set_attrs({"reference": entry})
    return entry
