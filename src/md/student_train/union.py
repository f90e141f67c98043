"""Several stores as one (``md train-student --store base.zarr --store delta.zarr``).

`StoreUnion` lays the member stores end to end in one index space, each starting at a
multiple of the base's shard size so no shard straddles two stores; the rows between a
store's end and the next start are never written (the sampler skips them). Every member
must have the base's schema but for its sample count (delta stores of
`md cache-teacher --ids` do).

Weighting: every frame of the union is sampled equally often, except that each delta
store is laid out ``delta_repeat`` times (R copies of its index range), so a delta frame
is drawn R times as often as a base frame. With R = 1 (the default) a delta of K frames
over a base of N makes K / (N + K) of each batch on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from md.errors import ConfigError
from md.stores import StoreSchema, TargetStore
from md.stores.codecs import CodecPreset


class StoreUnion:
    """The duck-typed `TargetStore` subset `md.student_train` reads through."""

    def __init__(self, base: TargetStore, deltas: Sequence[TargetStore], delta_repeat: int = 1):
        if delta_repeat < 1:
            raise ConfigError(f"delta_repeat={delta_repeat}: use an integer >= 1")
        self.members = [base, *deltas]
        ref = base.schema.to_json()
        for d in deltas:
            other = d.schema.to_json()
            diffs = [k for k in ref if k != "n" and ref[k] != other[k]]
            if diffs:
                raise ConfigError(
                    f"{d.url}: differs from the base store {base.url} in {', '.join(diffs)}; "
                    "cache the delta with md cache-teacher --ids REQUEST (the base's schema)"
                )
        ss = base.shard_size
        self.segments: list[tuple[int, int, int]] = []  # (offset, member, length)
        offset = 0
        for m, st in enumerate(self.members):
            for _ in range(1 if m == 0 else delta_repeat):
                self.segments.append((offset, m, st.n))
                offset += math.ceil(st.n / ss) * ss
        self._n = offset
        self.delta_repeat = delta_repeat
        self.url = "+".join(st.url for st in self.members)
        self.mode = "r"

    # -- the TargetStore subset ----------------------------------------------------------

    @property
    def n(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def shard_size(self) -> int:
        return self.members[0].shard_size

    @property
    def schema(self) -> StoreSchema:
        return replace(self.members[0].schema, n=self._n)

    @property
    def preset(self) -> CodecPreset:
        return self.members[0].preset

    @property
    def attrs(self) -> dict[str, Any]:
        return self.members[0].attrs

    @property
    def num_shards(self) -> int:
        return self._n // self.shard_size

    def shard_range(self, k: int) -> range:
        start = k * self.shard_size
        off, _, length = self.segments[self._segment(start)]
        return range(start, min(start + self.shard_size, off + length))

    def raw_names(self) -> list[str]:
        return self.members[0].raw_names()

    def written_mask(self) -> np.ndarray:
        mask = np.zeros(self._n, dtype=np.bool_)
        masks = [st.written_mask() for st in self.members]
        for off, m, length in self.segments:
            mask[off : off + length] = masks[m]
        return mask

    def close(self) -> None:
        for st in self.members:
            st.close()

    def read(
        self, indices: Sequence[int] | np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self._gather(indices, lambda st, local: st.read(local, names))

    def read_stored(
        self,
        indices: Sequence[int] | np.ndarray,
        names: Sequence[str] | None = None,
        *,
        alloc: Any = None,
    ) -> dict[str, np.ndarray]:
        return self._gather(indices, lambda st, local: st.read_stored(local, names))

    # -- mapping --------------------------------------------------------------------------

    def _segment(self, index: int) -> int:
        offsets = [s[0] for s in self.segments]
        return int(np.searchsorted(offsets, index, side="right")) - 1

    def locate(self, index: int) -> tuple[int, int]:
        """(member, local index) of union row `index`."""
        off, m, length = self.segments[self._segment(int(index))]
        local = int(index) - off
        if not 0 <= local < length or index >= self._n:
            raise IndexError(f"{self.url}: row {index} is padding between stores")
        return m, local

    def _gather(self, indices: Sequence[int] | np.ndarray, read: Any) -> dict[str, np.ndarray]:
        where = [self.locate(int(i)) for i in np.asarray(indices).ravel()]
        parts: list[tuple[list[int], dict[str, np.ndarray]]] = []
        for m in sorted({m for m, _ in where}):
            pos = [j for j, (mm, _) in enumerate(where) if mm == m]
            parts.append((pos, read(self.members[m], [where[j][1] for j in pos])))
        order = np.argsort(np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in parts]))
        return {
            name: np.concatenate([got[name] for _, got in parts])[order] for name in parts[0][1]
        }
