"""The student's streaming loader: teacher targets from a store + the student's inputs.

- `ShardAwareSampler`: batches of ``(row, aug_seed)``. Per epoch the shard order is shuffled,
  then samples are shuffled within windows of `window_shards` consecutive shards (in that
  order), so a batch reads from at most two adjacent windows (one, unless it straddles a
  window boundary) instead of from all over the store. The order is a pure function of
  (seed, epoch) and a sample's augmentation seed of (seed, global position), so a run resumed
  at iteration k sees exactly the batches of an uninterrupted run. For DDP the shards are
  dealt into G groups, each its own such stream; a batch is B / G rows of every group, and
  each rank reads only its groups' shards (`ShardAwareSampler.rank_batch`).
- `DistillDataset`: map-style over the sampler's rows. `__getitems__` reads a whole batch's
  targets with one `TargetStore.read` per flip state (DataLoader workers call it with the
  batch), then builds each sample: images (bundled in the store, or read from the dataset),
  the thermal reduction, the flip, the crop, and the targets cut to match.
- The store is a `TargetStore`, which pickles as URL + mode and reopens itself lazily in each
  worker process (keyed on the pid): no handle is shared across fork.

Augmentation consistency (offline == online == what the teacher would say):

- a flip uses the stored flipped views ``features_flip/L``, ``attention_flip/L`` (the teacher
  run on the mirrored images), never the stored maps mirrored;
- a crop window is aligned to `ALIGN` (the coarsest backbone stride) and cuts a stride-s map
  at rows [top/s, (top+h)/s) and columns [left/s, (left+w)/s), identically for every level;
- order: reduce thermal on the full frame (the sensor sees the whole scene) -> flip -> crop.

Sample keys: ``id``, ``group``, ``x`` (C, h, w) student input (C = 6, or 3 visible-only), the
task's labels (``labels`` or ``boxes``/``box_ignore``/``box_occlusion``), targets
``target/features/L`` (C_L, h_L, w_L) and ``target/attention/L`` (1, h_L, w_L) when read, as
stored (float16, or uint8 codes with ``target/feature_scale/L`` (C_L,) uint8 scale codes;
uint8 masks): float32 happens on the step's device (`md.stores.device`), and
for an online teacher ``teacher/visible`` (3, H, W), ``teacher/thermal`` (1, H, W) full frame
after the flip plus ``crop_window`` (4,) int64 (top, left, h, w).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from md.data import PairedDataset
from md.data.collate import ReadyBatch
from md.data.transforms import (
    crop_sample,
    hflip_sample,
    random_aligned_crop_params,
    reduce_thermal,
    student_input,
)
from md.errors import DataError
from md.stores import TargetStore
from md.stores.schema import (
    BOXES,
    INPUT_THERMAL,
    INPUT_VISIBLE,
    LABELS,
    NUM_BOXES,
    attention_name,
    features_name,
    scale_array_name,
)

ALIGN = 32  # coarsest backbone stride (c5): crops on this grid cut every level exactly
SCALE_KEY = "target/feature_scale/"  # + level: a quantized store's uint8 scale codes (C,)
# The student input's parts when it is built on the device (`device_inputs`, `build_input`)
RAW_VISIBLE, RAW_THERMAL = "input/visible", "input/thermal"  # uint8 (3, h, w), (1, h_T, w_T)
RAW_FLIP, RAW_WINDOW, RAW_FRAME = "input/flip", "input/window", "input/frame"

Key = tuple[int, int]  # (row, aug_seed)


# --- sampler ---------------------------------------------------------------------------------


class _ShardStream:
    """The rows of some shards in a shuffled order per epoch (shards shuffled, then samples
    within windows of `window_shards` consecutive shards). A pure function of (key, epoch)."""

    def __init__(
        self, rows: np.ndarray, shard_size: int, window_shards: int, key: list[int]
    ) -> None:
        shard_of = rows // shard_size
        self.shards = np.unique(shard_of)
        self.rows_of = {int(k): rows[shard_of == k] for k in self.shards}
        self.n, self.window_shards, self.key = rows.size, window_shards, key
        self._cache: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """(n,) rows of one epoch."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.key[0], epoch, *self.key[1:]]))
            shards = rng.permutation(self.shards)
            windows = [
                shards[i : i + self.window_shards]
                for i in range(0, shards.size, self.window_shards)
            ]
            order = [
                rng.permutation(np.concatenate([self.rows_of[int(k)] for k in w])) for w in windows
            ]
            self._cache = (epoch, np.concatenate(order))
        return self._cache[1]

    def row(self, position: int) -> int:
        """The row at a position of this stream (epochs run on back to back)."""
        return int(self.order(position // self.n)[position % self.n])


class ShardAwareSampler(Sampler[list[Key]]):
    """Shard-local shuffled batches over the written rows of a store (see module docstring),
    optionally from disjoint shard groups for distributed training.

    Args:
        store_n: samples in the store (rows are 0..store_n-1).
        shard_size: samples per shard.
        written_mask: (store_n,) bool; rows that may be sampled.
        batch_size: samples per (global) batch.
        seed: run seed; the order depends on (seed, epoch) only.
        window_shards: consecutive shards (in the shuffled shard order) mixed together.
        groups: G shard groups. The written shards are dealt round-robin (in shard order)
            into G groups; each group is its own shuffled stream, and batch i is the
            concatenation of each group's next B / G rows. Rank r of W reads groups
            r, r + W, ... (`rank_batch`), so ranks read disjoint shards, and the union of the
            ranks' batches is `batch(i)` whatever W: a run with 1 process and G groups sees
            the same global batches as one with G processes.

    ``batch(i)`` is the batch of iteration i: global position p = i·B + j falls in group
    g = j // (B/G) at that group's position q = i·(B/G) + j % (B/G) -> epoch q // N_g, slot
    q % N_g (N_g = the group's rows); batches run on across epochs, like the teacher's
    sampler. A sample's augmentation seed depends on (seed, p) only, so no two positions of a
    batch (on any rank) share flips and crops. G = 1 is the single-process sampler of before
    (same batches for the same seed).
    Iterating yields the batches of the epoch set by ``set_epoch`` (G = 1: that epoch's rows
    exactly, the last batch maybe short; G > 1: the ceil(N / B) batches from iteration
    epoch · ceil(N / B) on, as the groups' epochs need not line up).
    """

    def __init__(
        self,
        store_n: int,
        shard_size: int,
        written_mask: np.ndarray | Sequence[bool],
        batch_size: int,
        seed: int,
        window_shards: int = 4,
        groups: int = 1,
    ) -> None:
        mask = np.asarray(written_mask, dtype=bool)
        if mask.shape != (store_n,) or not mask.any():
            raise ValueError(f"written_mask must be ({store_n},) with some True, got {mask.shape}")
        if batch_size < 1 or shard_size < 1 or window_shards < 1 or groups < 1:
            raise ValueError("batch_size, shard_size, window_shards and groups must be >= 1")
        if batch_size % groups:
            raise ValueError(f"batch_size {batch_size} does not divide into {groups} groups")
        rows = np.flatnonzero(mask)
        shards = np.unique(rows // shard_size)
        if shards.size < groups:
            raise ValueError(f"{shards.size} written shards cannot fill {groups} groups")
        self.n, self.batch_size, self.seed = rows.size, batch_size, seed
        self.shard_size, self.window_shards, self.groups = shard_size, window_shards, groups
        # G = 1 keeps the stream key of the single-process sampler: the same batches as before.
        self._streams = [
            _ShardStream(
                rows[np.isin(rows // shard_size, shards[g::groups])],
                shard_size,
                window_shards,
                [seed, 0x5D] if groups == 1 else [seed, 0x5D, groups, g],
            )
            for g in range(groups)
        ]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int, group: int = 0) -> np.ndarray:
        """(N_g,) rows of one epoch of a group's stream (G = 1: all written rows)."""
        return self._streams[group].order(epoch)

    def group_shards(self, group: int) -> np.ndarray:
        """The shards a group (and so the rank that reads it) owns."""
        return self._streams[group].shards

    def rank_groups(self, rank: int, world: int) -> range:
        """The groups rank `rank` of `world` reads: rank, rank + world, ..."""
        if self.groups % world or not 0 <= rank < world:
            raise ValueError(f"{self.groups} groups cannot be split over rank {rank} of {world}")
        return range(rank, self.groups, world)

    def key(self, position: int) -> Key:
        """(row, aug_seed) at a global position (iteration·B + j)."""
        per_group = self.batch_size // self.groups
        iteration, slot = divmod(position, self.batch_size)
        group, j = divmod(slot, per_group)
        row = self._streams[group].row(iteration * per_group + j)
        aug = np.random.Generator(np.random.PCG64([self.seed, position, 0xA6])).integers(2**62)
        return row, int(aug)

    def batch(self, iteration: int) -> list[Key]:
        """The global batch of an iteration (all groups, in group order)."""
        return [self.key(iteration * self.batch_size + j) for j in range(self.batch_size)]

    def rank_batch(self, iteration: int, rank: int = 0, world: int = 1) -> list[Key]:
        """Rank `rank`'s part of batch `iteration`: its groups' B / G rows each, in order."""
        per_group = self.batch_size // self.groups
        first = iteration * self.batch_size
        return [
            self.key(first + g * per_group + j)
            for g in self.rank_groups(rank, world)
            for j in range(per_group)
        ]

    def __iter__(self) -> Iterator[list[Key]]:
        if self.groups > 1:
            yield from (
                self.batch(i) for i in range(self.epoch * len(self), (self.epoch + 1) * len(self))
            )
            return
        first = self.epoch * self.n
        for p in range(first, first + self.n, self.batch_size):
            yield [self.key(q) for q in range(p, min(p + self.batch_size, first + self.n))]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class IterationSpan(Sampler[list[Key]]):
    """The batches of iterations start .. stop-1 (the training loop's `batches(start)`); under
    DDP, rank `rank`'s part of each (`ShardAwareSampler.rank_batch`)."""

    def __init__(
        self, sampler: ShardAwareSampler, start: int, stop: int, rank: int = 0, world: int = 1
    ) -> None:
        sampler.rank_groups(rank, world)  # fail here, not in a DataLoader worker
        self.sampler, self.start, self.stop = sampler, start, stop
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[Key]]:
        for it in range(self.start, self.stop):
            yield self.sampler.rank_batch(it, self.rank, self.world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


# --- augmentation plan and target cuts -------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """One sample's augmentation, drawn from its seed before anything is read."""

    flip: bool
    window: tuple[int, int, int, int] | None  # (top, left, h, w), ALIGN-aligned; None = no crop


def draw_augment(
    aug_seed: int, image_hw: tuple[int, int], flip: bool, crop_hw: tuple[int, int] | None
) -> Augment:
    """Flip with p = 0.5 (if enabled), then a uniform ALIGN-aligned crop window (if enabled)."""
    g = torch.Generator().manual_seed(aug_seed)
    do_flip = bool(flip and torch.rand((), generator=g) < 0.5)
    window = None
    if crop_hw is not None:
        window = random_aligned_crop_params(*image_hw, *crop_hw, align=ALIGN, generator=g)
    return Augment(do_flip, window)


def cut_map(t: Tensor, window: tuple[int, int, int, int] | Sequence[int], stride: int) -> Tensor:
    """Cut a stride-`stride` map (..., H_L, W_L) to an image window (top, left, h, w).

    -> (..., h/stride, w/stride). The window must be aligned to `stride` and lie inside the
    image; maps of images whose size is not a multiple of the stride (H_L = ceil(H/s)) work,
    since the window never reaches the partial last cell.
    """
    top, left, h, w = (int(v) for v in window)
    if (top | left | h | w) % stride:
        raise ValueError(f"window {(top, left, h, w)} is not aligned to stride {stride}")
    rows, cols = (
        slice(top // stride, (top + h) // stride),
        slice(left // stride, (left + w) // stride),
    )
    out = t[..., rows, cols]
    if out.shape[-2:] != (h // stride, w // stride):
        raise ValueError(f"window {(top, left, h, w)} exceeds the {tuple(t.shape[-2:])} map")
    return out


def cut_batch(t: Tensor, windows: Tensor, stride: int) -> Tensor:
    """Per-sample cuts of a batch of maps: t (B, C, H_L, W_L), windows (B, 4) -> (B, C, h, w)."""
    return torch.stack([cut_map(t[i], windows[i].tolist(), stride) for i in range(t.shape[0])])


# --- the dataset -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSource:
    """Where a run's samples come from and what each sample carries (picklable).

    Rows are store indices when `store` is set, else dataset indices. `ds_index` maps a store
    row to its dataset index (None when images and labels all come from the store).
    """

    task: str
    image_hw: tuple[int, int]  # (H, W) of every image (targets are laid out for it)
    thermal_factor: int | None  # 1/4/16/64; None = visible-only student
    store: TargetStore | None = None
    dataset: PairedDataset | None = None
    ds_index: np.ndarray | None = None
    target_levels: Mapping[str, str] | None = None  # student level -> store level name
    strides: Mapping[str, int] | None = None  # student level -> stride
    bundled_inputs: bool = False  # images from the store's inputs/visible, inputs/thermal
    bundled_labels: bool = False  # labels / boxes from the store
    flip: bool = False
    crop_hw: tuple[int, int] | None = None
    teacher_inputs: bool = False  # also deliver full-frame images for an online teacher
    ids: np.ndarray | None = None  # store row -> sample id (read once, not per batch)
    device_inputs: bool = False  # bundled inputs: ship uint8, build ``x`` on the device
    groups: np.ndarray | None = None  # store row -> group


class DistillDataset(Dataset[dict[str, Any]]):
    """``ds[(row, aug_seed)]`` -> one student sample (keys in the module docstring).

    With `batched`, ``__getitems__`` returns the whole batch as a `ReadyBatch` where it can
    (`reads_batches`: bundled inputs and labels shipped as stored): the store's batch
    buffers are the batch, no per-sample arrays to stack (`collate` passes it through);
    exactly what `collate` of the per-sample items gives (tests)."""

    def __init__(self, source: SampleSource, batched: bool = False) -> None:
        self.src = source
        self.batched = batched

    def __len__(self) -> int:
        s = self.src
        if s.store is not None:
            return s.store.n
        assert s.dataset is not None
        return len(s.dataset)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[Key]) -> list[dict[str, Any]]:
        s = self.src
        augs = [draw_augment(seed, s.image_hw, s.flip, s.crop_hw) for _, seed in keys]
        rows = [int(r) for r, _ in keys]
        if self.batched and self.reads_batches():
            return ReadyBatch(self._raw_batch(rows, augs))  # type: ignore[return-value]
        stored = self._read_store(rows, augs)
        return [self._sample(rows[i], augs[i], stored[i]) for i in range(len(keys))]

    # -- store reads ---------------------------------------------------------------------------

    def _input_names(self) -> list[str]:
        """Bundled inputs / labels to read (the same whatever the flip)."""
        s = self.src
        names = [INPUT_VISIBLE, INPUT_THERMAL] if s.bundled_inputs else []
        if s.bundled_labels:
            names += [LABELS] if s.task == "segmentation" else [BOXES, NUM_BOXES]
        return names

    def _target_names(self, flip: bool) -> dict[str, str]:
        """Stored target name -> sample key, for one flip state."""
        names = {}
        for lv, name in (self.src.target_levels or {}).items():
            names[features_name(name, flip)] = f"target/features/{lv}"
            names[attention_name(name, flip)] = f"target/attention/{lv}"
        return names

    def _read_store(self, rows: list[int], augs: list[Augment]) -> list[dict[str, np.ndarray]]:
        """Per position, the store arrays it needs: one read of the inputs for the batch,
        one read of the targets per flip state present. Targets stay as stored (fp16 or
        uint8 codes + ``target/feature_scale/L`` codes, uint8 masks): the step decodes them
        on its device (`md.stores.device`, via `md.student_train.model.stored_targets`)."""
        out: list[dict[str, np.ndarray]] = [{} for _ in rows]
        store = self.src.store
        if store is None:
            return out
        if inputs := self._input_names():
            got = store.read(rows, names=inputs)
            for i in range(len(rows)):
                out[i].update({name: got[name][i] for name in inputs})
        for pos, got in self._target_reads(rows, augs):
            for j, i in enumerate(pos):
                out[i].update({key: values[j] for key, values in got.items()})
        return out

    def _target_reads(
        self, rows: list[int], augs: list[Augment]
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """One `read_stored` of the targets per flip state present: yields the batch
        positions with that flip state and {sample key: (len(pos), ...) as stored}, the
        quantized stores' scale codes under ``target/feature_scale/L``."""
        store = self.src.store
        assert store is not None
        for flip in (False, True):
            pos = [i for i, a in enumerate(augs) if a.flip == flip]
            names = self._target_names(flip)
            if not pos or not names:
                continue
            got = store.read_stored([rows[i] for i in pos], names=list(names))
            keys = dict(names)
            for name, key in names.items():
                scale = scale_array_name(name)
                if scale in got:
                    keys[scale] = key.replace("target/features/", SCALE_KEY, 1)
            yield pos, {key: got[name] for name, key in keys.items()}

    # -- whole batches -------------------------------------------------------------------------

    def reads_batches(self) -> bool:
        """Whether `_raw_batch` can build this source's batches (everything from the store,
        inputs shipped as stored, no online teacher)."""
        s = self.src
        return (
            s.store is not None
            and s.device_inputs
            and s.bundled_inputs
            and s.bundled_labels
            and not s.teacher_inputs
            and s.ids is not None
            and s.groups is not None
        )

    def _raw_batch(self, rows: list[int], augs: list[Augment]) -> dict[str, Any]:
        """`collate` of the `_raw_sample` items, built from the batch buffers of the store's
        reads: unflipped, uncropped arrays are those buffers (no copy); flips and crops are
        done per sample by the same functions, into one preallocated buffer per array."""
        s = self.src
        assert s.store is not None and s.ids is not None and s.groups is not None
        n, (height, width) = len(rows), s.image_hw
        got = s.store.read_stored(rows, names=self._input_names())
        vis = torch.from_numpy(got[INPUT_VISIBLE])
        if tuple(vis.shape[-2:]) != s.image_hw:
            raise DataError(
                f"sample {s.ids[rows[0]]}: image is {tuple(vis.shape[-2:])}, not {s.image_hw} "
                "like the rest; use images of one size"
            )
        crop_hw = augs[0].window[2:] if augs[0].window is not None else None
        out_vis = vis if crop_hw is None else vis.new_empty((n, vis.shape[1], *crop_hw))
        label_names = [LABELS] if s.task == "segmentation" else [BOXES, NUM_BOXES]
        labels: list[dict[str, Any]] = []
        for i, aug in enumerate(augs):
            item = {"visible": vis[i], **unpack_labels(s.task, {k: got[k][i] for k in label_names})}
            if aug.flip:
                item = hflip_sample(item)
            if aug.window is not None:
                item = crop_sample(item, *aug.window, align=ALIGN)
            if aug.flip or aug.window is not None:
                out_vis[i].copy_(item["visible"])
            del item["visible"]
            labels.append(item)
        batch: dict[str, Any] = {
            key: (torch.stack if key == "labels" else list)([it[key] for it in labels])
            for key in labels[0]
        }
        batch["id"] = [str(s.ids[r]) for r in rows]
        batch["group"] = [str(s.groups[r]) for r in rows]
        for key, values in self._read_targets(rows, augs).items():
            t = torch.from_numpy(values)
            if crop_hw is not None and not key.startswith(SCALE_KEY):  # scales: per channel
                cuts = [
                    cut_map(t[i], a.window or (), self._stride(key)) for i, a in enumerate(augs)
                ]
                t = t.new_empty((n, *cuts[0].shape))
                for i, cut in enumerate(cuts):
                    t[i].copy_(cut)
            batch[key] = t
        batch[RAW_VISIBLE] = out_vis
        if s.thermal_factor is not None:
            batch[RAW_THERMAL] = torch.from_numpy(got[INPUT_THERMAL])
        batch[RAW_FLIP] = torch.tensor([a.flip for a in augs])
        batch[RAW_WINDOW] = torch.tensor([a.window or (0, 0, height, width) for a in augs])
        batch[RAW_FRAME] = torch.tensor([s.image_hw] * n)
        return batch

    def _read_targets(self, rows: list[int], augs: list[Augment]) -> dict[str, np.ndarray]:
        """The batch's targets as stored, {sample key: (B, ...)}: one `read_stored` per flip
        state present; its buffers are the batch's when every sample has that flip state."""
        n = len(rows)
        out: dict[str, np.ndarray] = {}
        for pos, got in self._target_reads(rows, augs):
            for key, values in got.items():
                if len(pos) == n:
                    out[key] = values
                else:
                    buf = out.setdefault(key, np.empty((n, *values.shape[1:]), values.dtype))
                    buf[pos] = values
        return out

    # -- one sample ----------------------------------------------------------------------------

    def _sample(self, row: int, aug: Augment, stored: dict[str, np.ndarray]) -> dict[str, Any]:
        s = self.src
        if s.device_inputs and s.bundled_inputs and not s.teacher_inputs:
            return self._raw_sample(row, aug, stored)
        item = self._base_item(row, stored)
        # Thermal at student resolution, on the full frame; the teacher keeps the full one.
        full_thermal = item["thermal"]
        if INPUT_THERMAL in stored:
            item["thermal"] = upsample_thermal(stored[INPUT_THERMAL], s.image_hw)
        elif s.thermal_factor is not None:
            item["thermal"] = reduce_thermal(full_thermal, s.thermal_factor)
        if s.teacher_inputs:
            item["teacher/thermal"] = full_thermal
        dense = ["teacher/thermal"] if s.teacher_inputs else []
        if aug.flip:
            item = hflip_sample(item, dense_keys=dense)
        if s.teacher_inputs:
            item["teacher/visible"] = item["visible"]
            item["crop_window"] = torch.tensor(aug.window or (0, 0, *s.image_hw))
        if aug.window is not None:
            item = crop_sample(item, *aug.window, align=ALIGN)
        self._add_targets(item, aug, stored)
        item["x"] = student_input(
            item.pop("visible"), None if s.thermal_factor is None else item["thermal"]
        )
        item.pop("thermal")
        return item

    def _raw_sample(self, row: int, aug: Augment, stored: dict[str, np.ndarray]) -> dict[str, Any]:
        """A sample whose student input is built on the step's device (`device_inputs`):
        the bundled uint8 visible image, flipped and cropped (exact on uint8), the bundled
        low-resolution uint8 thermal as stored (full frame, unflipped: upsampled, flipped and
        cut there, in the order `_sample` uses), the flip and the window; targets as in
        `_sample`. 1 MB per 640x512 sample instead of 7.9 MB of float32 ``x``."""
        s = self.src
        item = self._base_item(row, stored, raw=True)
        item.pop("thermal", None)  # None: only the bundled low-resolution one exists
        if aug.flip:
            item = hflip_sample(item)
        if aug.window is not None:
            item = crop_sample(item, *aug.window, align=ALIGN)
        self._add_targets(item, aug, stored)
        item[RAW_VISIBLE] = item.pop("visible")
        if s.thermal_factor is not None:
            item[RAW_THERMAL] = torch.from_numpy(np.ascontiguousarray(stored[INPUT_THERMAL]))
        item[RAW_FLIP] = torch.tensor(aug.flip)
        item[RAW_WINDOW] = torch.tensor(aug.window or (0, 0, *s.image_hw))
        item[RAW_FRAME] = torch.tensor(s.image_hw)
        return item

    def _add_targets(self, item: dict[str, Any], aug: Augment, stored: dict[str, Any]) -> None:
        for key in [k for k in stored if k.startswith("target/")]:
            t = torch.from_numpy(stored[key])  # a view of the batch's buffer, no copy
            if aug.window is not None and not key.startswith(SCALE_KEY):  # scales: per channel
                t = cut_map(t, aug.window, self._stride(key))
            item[key] = t

    def _stride(self, key: str) -> int:
        assert self.src.strides is not None
        return self.src.strides[key.rsplit("/", 1)[1]]

    def _base_item(
        self, row: int, stored: dict[str, np.ndarray], raw: bool = False
    ) -> dict[str, Any]:
        """Full-frame visible (3, H, W), thermal (1, H, W) (None if only the bundled low one
        exists), labels, id, group; from the dataset and/or the store. With `raw` the
        bundled visible stays uint8."""
        s = self.src
        item: dict[str, Any] = {}
        if s.dataset is not None and not (s.bundled_inputs and s.bundled_labels):
            index = row if s.ds_index is None else int(s.ds_index[row])
            item = dict(s.dataset[index])
        if s.bundled_inputs:
            visible = torch.from_numpy(stored[INPUT_VISIBLE])
            item["visible"] = visible if raw else visible.float() / 255.0
            item.setdefault("thermal", None)
        if s.bundled_labels:
            item.update(unpack_labels(s.task, stored))
        if s.ids is not None and s.groups is not None:
            item["id"], item["group"] = str(s.ids[row]), str(s.groups[row])
        if tuple(item["visible"].shape[-2:]) != s.image_hw:
            raise DataError(
                f"sample {item.get('id')}: image is {tuple(item['visible'].shape[-2:])}"
                f", not {s.image_hw} like the rest; use images of one size"
            )
        return item


def build_input(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch from `device_inputs` samples (on any device) -> the same batch with ``x``, as
    `DistillDataset._sample` builds it on the host: visible / 255; thermal / 255, bilinear up
    to the full frame (`upsample_thermal`), flipped, cut to the window, repeated 3x. The
    same float32 operations in the same order, so on a CPU it is bitwise the host's ``x``
    (tests); batches that carry ``x`` pass through."""
    if "x" in batch or RAW_VISIBLE not in batch:
        return batch
    b = dict(batch)
    visible = b.pop(RAW_VISIBLE)
    flips, windows = b.pop(RAW_FLIP).tolist(), b.pop(RAW_WINDOW).tolist()
    height, width = (int(v) for v in b.pop(RAW_FRAME)[0].tolist())
    vis = visible.float() / 255.0
    low = b.pop(RAW_THERMAL, None)
    if low is None:
        b["x"] = student_input(vis, None)
        return b
    full = low.float().div(255.0)
    if tuple(full.shape[-2:]) != (height, width):
        full = F.interpolate(full, size=(height, width), mode="bilinear", align_corners=False)
    parts = []
    for i, (top, left, h, w) in enumerate(windows):
        t = full[i].flip(-1) if flips[i] else full[i]
        parts.append(t[..., top : top + h, left : left + w])
    x = student_input(vis, torch.stack(parts))
    if visible.dim() == 4 and not visible.is_contiguous():  # channels_last, as `to_device` made it
        x = x.contiguous(memory_format=torch.channels_last)
    return b | {"x": x}


def upsample_thermal(low: np.ndarray, image_hw: tuple[int, int]) -> Tensor:
    """Bundled thermal (1, h, w) uint8 -> (1, H, W) float32 in [0, 1]: the up-sampling half
    of `reduce_thermal` (bilinear, align_corners=False)."""
    x = torch.from_numpy(np.ascontiguousarray(low)).float().div(255.0)
    if tuple(x.shape[-2:]) == tuple(image_hw):
        return x
    return F.interpolate(x[None], size=image_hw, mode="bilinear", align_corners=False)[0]


def unpack_labels(task: str, stored: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Bundled labels -> dataset item fields: ``labels`` (H, W) int64, or ``boxes`` (N, 4),
    ``box_ignore`` (N,) bool, ``box_occlusion`` (N,) int64 from rows
    (x1, y1, x2, y2, ignore, occlusion) of which the first ``num_boxes`` are real."""
    if task == "segmentation":
        return {"labels": torch.from_numpy(stored[LABELS].astype(np.int64))}
    rows = torch.from_numpy(np.asarray(stored[BOXES])[: int(stored[NUM_BOXES])].copy())
    return {
        "boxes": rows[:, :4].float(),
        "box_ignore": rows[:, 4] > 0.5,
        "box_occlusion": rows[:, 5].round().long(),
    }
