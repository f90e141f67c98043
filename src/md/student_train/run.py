"""`md train-student`: the one-stream MD student, distilled from a teacher-target store.

run(cfg) reads straight down: resolve the run (`resolve.prepare`: store, data, online teacher,
sample source, the student and its loss from `model`) -> streaming loader -> `train_loop` ->
loader-feed record. The config and presets are in `config`.

Loss = task loss + λ_A · attention transfer (Dice, MD eq. 3) + λ_S · semantic transfer
(F-MSE, eq. 4; ``semantic_loss=mse`` for the S(M) ablation), each transfer loss the mean over
the distilled levels. ``attention`` / ``semantic`` switch the parts for MD Tables 7-8.
λ_A = λ_S = 1 by default: the paper adds the transfer losses to the task loss unweighted.
Both are already scale-free: Dice lies in [0, 1], and F-MSE divides by C with softmax weights
summing to 1 per image, so it is the per-channel squared error at the hardest positions,
independent of channel count, map size and batch. When D sums hundreds of channels the
softmax is nearly one-hot (F-MSE ≈ the worst position's D / C, about 4x plain MSE on our CPU
teachers, where it starts at 10-40 against a task loss of 7-15); lower ``semantic_weight`` if
it drowns the task loss on a new teacher.

Three modes:

- offline (default): targets stream from ``--store``; the teacher is never loaded. Images
  come from the store if it bundles them (``inputs/visible``, ``inputs/thermal``), else from
  ``--data`` (its fingerprint and sample ids must match the store's provenance);
- ``online_teacher``: the same losses on targets computed live by a teacher checkpoint on
  the same flips / crops (the comparison point for offline speed); needs ``--data``;
- ``distill=false``: task loss only (the native image-level or visible-only student).

Defaults follow MD §4.2 (batch 16, SGD lr 1e-2, 500 warm-up iterations from 1e-6, cosine;
3,500 / 14,000 iterations for detection / segmentation).

Multi-process (``torchrun --nproc-per-node W -m md.cli train-student ...``): ``batch_size``
stays the *global* batch (the recipe's 16; each rank takes batch_size / W), so the schedule
and recipe are those of one process. The store's shards are dealt into ``shard_groups`` G
groups (default W) and each rank reads only its groups' shards; the global batch depends on
(seed, iteration, G), not on W, so 1 process with G groups trains on the same batches as G
processes. See `md.train.distributed` for what keeps a W-rank step equal to one process's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from md.config import check_limits, save_config
from md.data import collate
from md.data.prefetch import Prefetcher
from md.student_train.config import StudentTrainConfig
from md.student_train.loader import DistillDataset, IterationSpan
from md.student_train.resolve import Setup, check_world, prepare
from md.train import distributed, loop
from md.train.loop import LoopResult, LoopSettings, sidecar, train_loop


class FeedMeter:
    """Times how long the training loop waits for each batch (loader feed vs step time)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batches, self.wait, self.first_wait = 0, 0.0, 0.0

    def wrap(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        it = iter(batches)
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                dt = time.perf_counter() - t0
                if self.batches == 0:
                    self.first_wait = dt  # worker start-up and the first read: not steady state
                else:
                    self.wait += dt
                self.batches += 1
                yield batch
        finally:  # closed early (error, interrupt, stop_after): stop the read-ahead now
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def record(self, seconds: float) -> dict[str, Any]:
        """Steady-state figures (the first batch excluded): samples/s the step consumed and
        the fraction of the loop spent waiting on the loader (≈ 0 when it keeps up)."""
        n = max(0, self.batches - 1) * self.batch_size
        busy = max(1e-9, seconds - self.first_wait)
        return {
            "batches": self.batches,
            "first_batch_s": round(self.first_wait, 4),
            "wait_s": round(self.wait, 4),
            "wait_fraction": round(self.wait / busy, 4),
            "train_samples_per_s": round(n / busy, 2),
            "step_samples_per_s": round(n / max(1e-9, busy - self.wait), 2),
        }


def make_loader(
    setup: Setup, start: int, stop: int, device: torch.device, num_workers: int | None = None
) -> DataLoader:
    """The DataLoader for iterations start .. stop-1 (workers open the store lazily); under
    DDP this rank's part of each batch, with its own workers."""
    cfg = setup.cfg
    workers = cfg.num_workers if num_workers is None else num_workers
    return DataLoader(
        DistillDataset(setup.source, batched=True),
        batch_sampler=IterationSpan(setup.sampler, start, stop, setup.rank, setup.world_size),
        collate_fn=collate,
        num_workers=workers,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=False,
    )


def stream_batches(
    setup: Setup, start: int, stop: int, device: torch.device, num_workers: int | None = None
) -> Iterator[dict[str, Any]]:
    """The batches of `make_loader`; with 0 workers (and ``prefetch_batches`` > 0) read
    ahead on a thread (`md.data.prefetch.Prefetcher`) so reading, decoding and collating the
    next batches overlap the step (zstd, Pillow and torch release the GIL). Same batches in
    the same order; an error while reading is raised at its batch; closing the generator
    (the loop does on errors and interrupts) stops the thread."""
    loader = make_loader(setup, start, stop, device, num_workers)
    depth = setup.cfg.prefetch_batches
    if loader.num_workers or depth == 0:
        yield from loader
        return
    with Prefetcher(iter(loader), depth=depth, name="md-student-prefetch") as batches:
        yield from batches


def loop_settings(cfg: StudentTrainConfig, iterations: int) -> LoopSettings:
    return loop.loop_settings(
        cfg,
        iterations,
        sync_batchnorm=cfg.sync_batchnorm,
        find_unused_parameters=_may_leave_parameters_unused(cfg),
    )


def _may_leave_parameters_unused(cfg: StudentTrainConfig) -> bool:
    """Whether a step can leave transfer modules without gradient: their outputs reach the
    task head only when ``head_input=attended``; else only the enabled transfer losses use
    them (DDP then has to look for unused parameters every step)."""
    return cfg.head_input != "attended" and bool(cfg.levels)


@dataclass(frozen=True)
class StudentRun:
    """What `run` did on this process: the loop's result and what the summary reports."""

    loop: LoopResult
    out: str
    device: str
    mode: str  # native | online | offline
    loader: dict[str, Any]  # `FeedMeter.record`: rank 0's wait, the job's samples/s
    lineage: dict[str, Any]  # the store and teacher behind the targets
    rank: int
    world_size: int

    def summary(self) -> dict[str, Any]:
        """The ``--json`` record: the loop's fields, then the run's."""
        return {
            **dataclasses.asdict(self.loop),
            "out": self.out,
            "device": self.device,
            "mode": self.mode,
            "loader": self.loader,
            "lineage": self.lineage,
            "rank": self.rank,
            "world_size": self.world_size,
        }


def run(cfg: StudentTrainConfig, *, out: str | Path, resume: bool = False) -> StudentRun:
    """Train a student; writes OUT, OUT-stem.{metrics.jsonl,loss.png,config.yaml}.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes the files."""
    check_limits(cfg)
    out = Path(out)
    env = distributed.env_from()
    check_world(cfg, env.world_size)  # before any process waits on the others
    device = distributed.device_for(env, cfg.device)
    with distributed.process_group(env, device, cfg.dist_timeout_s):
        return _train(cfg, out, resume, env, device)


def _train(
    cfg: StudentTrainConfig, out: Path, resume: bool, env: distributed.DistEnv, device: torch.device
) -> StudentRun:
    setup = prepare(cfg, rank=env.rank, world_size=env.world_size)
    if env.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_config(setup.cfg, sidecar(out, "config.yaml"))
    if setup.teacher is not None:
        setup.teacher.to(device)
        if setup.cfg.channels_last:
            setup.teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    meter = FeedMeter(setup.cfg.batch_size)  # global batch: the ranks step together

    def batches(start: int) -> Iterator[dict[str, Any]]:
        return meter.wrap(stream_batches(setup, start, setup.iterations, device))

    mode = (
        "native" if not setup.cfg.distill else "online" if setup.teacher is not None else "offline"
    )
    result = train_loop(
        setup.model,
        setup.loss_fn,
        batches,
        loop_settings(setup.cfg, setup.iterations),
        out=out,
        meta=setup.meta,
        device=device,
        resume=resume,
        desc=f"student[{mode}/{setup.cfg.task}]",
        dist=env,
    )
    feed = meter.record(result.seconds)  # rank 0's wait; samples/s of the whole job
    if env.is_main:
        with sidecar(out, "metrics.jsonl").open("a") as f:  # not a loss record: the plot skips it
            f.write(
                json.dumps(
                    {
                        "kind": "loader",
                        "iteration": result.iteration,
                        "world_size": env.world_size,
                        **feed,
                    }
                )
                + "\n"
            )
    return StudentRun(
        result, str(out), str(device), mode, feed, setup.meta["lineage"], env.rank, env.world_size
    )
