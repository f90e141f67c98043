"""The shard loop: teacher over the samples of some shards -> whole shards in the store.

`cache_shards` is the unit of work of every scale-out: `md cache-teacher` calls it once with
the store's unwritten shards; a Dask scale-out calls it once per task with ``[k]`` (each
worker owns whole shards, so writers never share one). Batches never cross a shard, so a
shard's targets do not depend on which other shards run with it: a resumed run computes
exactly the arrays an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from md.data.collate import collate
from md.data.prefetch import Prefetcher
from md.errors import DataError
from md.stores import StoreSchema, TargetStore
from md.stores.schema import FLIP
from md.teacher_cache.targets import bundled_inputs, teacher_targets
from md.teacher_cache.writer import Shard, WriterKind, make_writer


@dataclass(frozen=True)
class ShardOptions:
    """How `cache_shards` computes a shard (everything but the teacher, data and store)."""

    levels: tuple[str, ...]  # fused levels to store, e.g. ("c3", "c4", "c5")
    image_size: tuple[int, int]  # (H, W) every sample must have (store arrays are fixed-shape)
    batch_size: int = 8  # teacher batch; the last batch of a shard may be smaller
    flip_views: bool = False  # also store the teacher's outputs on mirrored inputs
    thermal_factor: int = 0  # > 0: bundle inputs with thermal reduced by this pixel factor
    max_boxes: int = 0  # rows of the bundled ``boxes`` array (detection bundles)
    amp: Literal["none", "bf16"] = "none"  # autocast dtype of the teacher forward
    num_workers: int = 0  # DataLoader processes reading images
    read_ahead: int = 2  # batches decoded ahead on a thread when num_workers == 0 (0: off)
    max_queued: int = 2  # computed shards waiting for the writer thread (bounds memory)
    stop_after_shards: int = 0  # stop after submitting this many shards (0: all); resumable
    writer: WriterKind = "auto"  # shard writer: a child process where possible, else a thread


@dataclass
class ShardStats:
    """What one `cache_shards` call did."""

    shards: int = 0  # shards written
    samples: int = 0  # samples of those shards
    bytes: int = 0  # stored bytes of those shards (all arrays)
    forward_seconds: float = 0.0  # teacher forward incl. device->host copies, this thread


def shard_batches(schema: StoreSchema, shards: Sequence[int], batch_size: int) -> list[list[int]]:
    """Sample-index batches of at most `batch_size`, shard by shard, never crossing a shard."""
    batches: list[list[int]] = []
    for k in shards:
        rng = schema.shard_range(k)
        batches.extend(
            list(range(i, min(i + batch_size, rng.stop)))
            for i in range(rng.start, rng.stop, batch_size)
        )
    return batches


def cache_shards(
    teacher: nn.Module,
    dataset: Dataset[dict[str, Any]],
    store: TargetStore,
    shards: Sequence[int],
    opts: ShardOptions,
    *,
    on_written: Callable[[Shard, int], None] | None = None,
    before_submit: Callable[[], None] | None = None,
) -> ShardStats:
    """Run `teacher` (eval mode, on its device) over `shards` of `dataset` and write each one
    whole into `store` (opened 'r+'); dataset index i is store sample i.

    Teacher compute runs here while a writer thread encodes and writes the previous shards.
    On an interrupt or crash every shard already computed is still written and the shard in
    progress stays unwritten (see `md.teacher_cache.writer`); the exception propagates.
    `before_submit` runs before each shard is handed to the writer (the writer lock's check:
    a run that lost its store stops there).
    """
    batches = shard_batches(store.schema, shards, opts.batch_size)
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=opts.num_workers
    )
    stats = ShardStats()
    # Start DataLoader workers (fork) before the writer and the read-ahead thread exist.
    stream: Iterator[dict[str, Any]] = iter(loader)
    with contextlib.ExitStack() as stack:
        stack.enter_context(short_gil_switches())
        writer = stack.enter_context(make_writer(store, opts.max_queued, on_written, opts.writer))
        if opts.read_ahead > 0 and opts.num_workers == 0:  # after the writer's fork
            stream = stack.enter_context(Prefetcher(stream, opts.read_ahead, "md-cache-read"))
        computed = _computed_shards(teacher, stream, batches, store.schema, opts, stats)
        for submitted, shard in enumerate(computed, start=1):
            if before_submit is not None:
                before_submit()
            writer.submit(shard)
            if submitted == opts.stop_after_shards:
                break
    stats.shards, stats.bytes = writer.shards_written, writer.bytes_written
    stats.samples = sum(len(store.schema.shard_range(k)) for k in shards[: stats.shards])
    return stats


# While a shard loop runs: how long a thread may hold the GIL before one waiting for it gets
# it (Python's default is 5 ms). The teacher's thread releases the GIL inside every torch op
# and must win it back to dispatch the next; with the read-ahead thread (and a writer thread)
# running Python code, each of those waits could last the whole interval. At 0.5 ms the
# cache run went from 0.72x to 0.87x of the teacher's forward-only rate (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def short_gil_switches() -> Iterator[None]:
    """Set `GIL_SWITCH_INTERVAL_S` (process-wide) while any shard loop of this process runs,
    and restore the previous interval when the last one ends."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, GIL_SWITCH_INTERVAL_S))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


def _computed_shards(
    teacher: nn.Module,
    loader: Iterator[dict[str, Any]],
    batches: list[list[int]],
    schema: StoreSchema,
    opts: ShardOptions,
    stats: ShardStats,
) -> Iterator[Shard]:
    """Yield each shard once all of its batches have gone through the teacher."""
    device = next(teacher.parameters()).device
    parts: list[dict[str, np.ndarray]] = []
    ids: list[str] = []
    groups: list[str] = []
    for indices, batch in zip(batches, loader, strict=True):
        _check_size(batch, opts.image_size)
        t0 = time.perf_counter()
        parts.append(batch_targets(teacher, batch, opts, device))
        stats.forward_seconds += time.perf_counter() - t0
        ids.extend(batch["id"])
        groups.extend(batch["group"])
        k = schema.shard_of(indices[0])
        if len(ids) == len(schema.shard_range(k)):
            arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            yield Shard(k, arrays, ids, groups)
            parts, ids, groups = [], [], []


def batch_targets(
    teacher: nn.Module, batch: dict[str, Any], opts: ShardOptions, device: torch.device
) -> dict[str, np.ndarray]:
    """Every target array of one collated batch (see `md.teacher_cache.targets`)."""
    visible = batch["visible"].to(device, non_blocking=True)
    thermal = batch["thermal"].to(device, non_blocking=True)
    out = teacher_targets(teacher, visible, thermal, opts.levels, amp=opts.amp)
    if opts.flip_views:
        out.update(
            teacher_targets(
                teacher,
                visible.flip(-1),
                thermal.flip(-1),
                opts.levels,
                amp=opts.amp,
                suffix=FLIP,
            )
        )
    if opts.thermal_factor:
        out.update(bundled_inputs(batch, opts.thermal_factor, opts.max_boxes))
    return out


def _check_size(batch: dict[str, Any], size: tuple[int, int]) -> None:
    got = tuple(batch["visible"].shape[-2:])
    if got != tuple(size):
        raise DataError(
            f"sample {batch['id'][0]}: image size {got[1]}x{got[0]} differs from the store's "
            f"{size[1]}x{size[0]}; store arrays are fixed-shape: cache each image size separately"
        )
