"""Batching of dataset items (a `DataLoader` ``collate_fn``).

Dense tensors (``visible`` (B,3,H,W), ``thermal`` (B,1,H,W), ``labels`` (B,H,W) and any other
same-shape tensor a loader adds, e.g. teacher targets) are stacked. Per-box fields
(``boxes`` and every ``box_*`` key) stay lists, one entry per image, because images hold
different numbers of boxes; strings (``id``, ``group``) and anything else become lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Batch = dict[str, Any]


class ReadyBatch(dict[str, Any]):
    """A batch a dataset's ``__getitems__`` built itself (its arrays read straight into batch
    buffers, nothing to stack): `collate` passes it through as a plain dict."""


def is_box_key(key: str) -> bool:
    """Keys whose values have one entry per box: ``boxes``, ``box_ignore``, ..."""
    return key == "boxes" or key.startswith("box_")


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Batch a list of items; raises `ValueError` naming the ids if images differ in size.
    A `ReadyBatch` (already a batch) comes back as a plain dict."""
    if isinstance(items, ReadyBatch):
        return dict(items)
    if not items:
        raise ValueError("collate: empty list of items")
    keys = list(items[0])
    for item in items[1:]:
        if set(item) != set(keys):
            raise ValueError(
                f"collate: item {item.get('id')!r} has keys {sorted(item)}, expected {sorted(keys)}"
            )
    return {key: _collate_key(key, [item[key] for item in items], items) for key in keys}


def _collate_key(key: str, values: list[Any], items: Sequence[dict[str, Any]]) -> Any:
    """Stack same-shape tensors; keep lists for per-box fields and non-tensors."""
    if is_box_key(key) or not all(isinstance(v, torch.Tensor) for v in values):
        return values
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        sizes = ", ".join(
            f"{item.get('id')!r}: {tuple(v.shape)}" for item, v in zip(items, values, strict=True)
        )
        raise ValueError(
            f"collate: {key!r} differs in shape across the batch ({sizes}); "
            "resize or crop to one size first"
        )
    return torch.stack(values)
