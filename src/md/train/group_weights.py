"""Group-reweighted training: one loss weight per training sample, by the sample's group.

``group_weights`` in the train-student and train-teacher configs:

- ``none`` (default): no weights; the loss is computed exactly as without this module.
- ``inverse_frequency``: ``w_g = N / (K · n_g)`` over the N training samples in K groups
  (n_g in group g), so every group carries the same total weight and the weights average 1
  over the training set (the loss keeps its scale).
- ``FILE``: a JSON file ``{"weights": {group: weight, ...}}`` (optionally ``"field"``);
  every group of the training set must be named.

``group_field`` names the grouping: ``day_night`` (the sample's day / night group) or a
per-sample field of DATA/groups.json, ``{FIELD: {sample id: value}}`` (the synthetic
generator's ``appearance``). Weights multiply each sample's task loss (detection: every
anchor of the image, so every object in it; segmentation: every pixel of the image) and
transfer losses; normalisers stay unweighted, so the loss is linear in the weights. The
teacher's GAFF mask losses are not weighted. The weights and where they came from go into
the checkpoint's lineage.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from md.errors import ConfigError, DataError

NONE = "none"
INVERSE_FREQUENCY = "inverse_frequency"
DAY_NIGHT = "day_night"


def inverse_frequency(counts: Mapping[str, int]) -> dict[str, float]:
    """``{group: N / (K · n_g)}``; groups with no samples are left out."""
    present = {g: n for g, n in counts.items() if n > 0}
    total, k = sum(present.values()), len(present)
    return {g: total / (k * n) for g, n in sorted(present.items())}


@dataclass(frozen=True)
class GroupWeights:
    """Resolved weights: group of each training sample id and weight of each group."""

    field: str
    source: str  # "inverse_frequency" or the weights file
    weights: dict[str, float]
    counts: dict[str, int]
    sample_groups: dict[str, str]  # id -> group (empty for day_night: from the batch)
    file_sha256: str | None = None

    def group_of(self, sample_id: str, day_night: str | None) -> str:
        if self.field == DAY_NIGHT:
            return str(day_night)
        try:
            return self.sample_groups[sample_id]
        except KeyError:
            raise DataError(
                f"sample {sample_id}: no {self.field!r} group in groups.json; regenerate it "
                "for this dataset"
            ) from None

    def batch_weights(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """(B,) float32 weights of a collated batch (by its ``id`` and ``group`` lists)."""
        ids = batch["id"]
        day_night = batch.get("group") or [None] * len(ids)
        values = []
        for sample_id, dn in zip(ids, day_night, strict=True):
            group = self.group_of(str(sample_id), dn)
            if group not in self.weights:
                raise ConfigError(
                    f"group_weights {self.source}: no weight for group {group!r} of field "
                    f"{self.field!r}; name every group ({', '.join(sorted(self.counts))})"
                )
            values.append(self.weights[group])
        return torch.tensor(values, dtype=torch.float32, device=device)

    def lineage(self) -> dict[str, Any]:
        """What goes into the checkpoint: field, source (and its sha256), weights, counts."""
        return {
            "field": self.field,
            "source": self.source,
            "file_sha256": self.file_sha256,
            "weights": dict(self.weights),
            "counts": dict(self.counts),
        }


def read_sample_groups(data: str | Path, field: str) -> dict[str, str]:
    """``{sample id: value}`` of `field` from DATA/groups.json."""
    path = Path(data) / "groups.json"
    if not path.is_file():
        raise DataError(
            f"{path}: not found; group_field={field} needs a groups.json "
            '({"FIELD": {"sample id": "value"}}, written by md data synth --appearance), '
            "or use group_field=day_night"
        )
    try:
        table = json.loads(path.read_text())
        return {str(k): str(v) for k, v in table[field].items()}
    except KeyError:
        raise DataError(f"{path}: no field {field!r}; use one of {sorted(table)}") from None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not a groups file ({type(e).__name__}: {e}); write "
            '{"FIELD": {"sample id": "value"}}'
        ) from None


def resolve(
    spec: str,
    field: str,
    data: str | Path | None,
    ids: Sequence[str],
    day_night: Sequence[str],
) -> GroupWeights | None:
    """The weights of `spec` for the training samples `ids` (with their day/night groups)."""
    if spec in ("", NONE):
        return None
    if field == DAY_NIGHT:
        sample_groups: dict[str, str] = {}
        groups = [str(g) for g in day_night]
    else:
        if not data:
            raise ConfigError(
                f"group_field={field}: needs data=DATA with groups.json; or group_field=day_night"
            )
        sample_groups = read_sample_groups(data, field)
        missing = [i for i in ids if i not in sample_groups]
        if missing:
            raise DataError(
                f"{Path(data) / 'groups.json'}: {len(missing)} training samples have no "
                f"{field!r} group (first {missing[0]}); regenerate it for this dataset"
            )
        groups = [sample_groups[i] for i in ids]
        sample_groups = {i: sample_groups[i] for i in ids}
    counts = dict(sorted(Counter(groups).items()))
    if spec == INVERSE_FREQUENCY:
        return GroupWeights(field, spec, inverse_frequency(counts), counts, sample_groups)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"group_weights={spec}: not none, inverse_frequency or an existing JSON file "
            '({"weights": {"group": weight}})'
        )
    raw = path.read_bytes()
    try:
        table = json.loads(raw)
        weights = {str(g): float(w) for g, w in table["weights"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{path}: not a group weights file ({type(e).__name__}: {e}); write "
            '{"weights": {"group": weight, ...}}'
        ) from None
    if table.get("field", field) != field:
        raise ConfigError(
            f"{path}: weights are for field {table['field']!r}, the run groups by {field!r}; "
            f"set group_field={table['field']}"
        )
    if any(w < 0 for w in weights.values()):
        raise ConfigError(f"{path}: negative weight; use weights >= 0")
    unnamed = sorted(set(counts) - set(weights))
    if unnamed:
        raise ConfigError(f"{path}: no weight for groups {unnamed}; name every group")
    sha = hashlib.sha256(raw).hexdigest()
    return GroupWeights(field, str(path), weights, counts, sample_groups, sha)
