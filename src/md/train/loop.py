"""The resumable training loop shared by teacher and student training.

Reads top to bottom: restore (if resuming) -> for each iteration: seed, lr, forward under
autocast, backward, step, log -> periodic resume checkpoints -> final checkpoint, log figure.

Under DDP (`dist` of several ranks, see `md.train.distributed`) every rank runs this loop on
its part of each batch; BatchNorm is synchronised and the model wrapped after the restore.
Every rank restores from the one resume file; rank 0 alone writes the checkpoint, the resume
file, the metrics log (losses averaged over ranks) and the figure, and shows the progress bar;
the ranks meet at a barrier before returning, so the files exist when any rank returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from md.errors import MdError
from md.models.checkpoint import load_checkpoint
from md.progress import progress_bar
from md.train import distributed, recipe
from md.train.checkpoint import save_checkpoint
from md.train.metrics_log import MetricsLog, plot_loss_curves

LossFn = Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]]

# Config fields that steer a run but do not change what it computes: a resume may differ in
# these (e.g. stop_after, more workers, no progress bar) and still reach the same weights.
# These are `RunConfig`'s; a command's config may declare more (`recipe.run_control`).
RUN_CONTROL_FIELDS = recipe.run_control_fields(recipe.RunConfig)

# Loss-function outputs under this prefix are diagnostics, not losses: logged as they are
# (``stats/...``, no ``loss/`` prefix), kept out of the progress bar and `LoopResult.last`,
# never part of the backward. A loss function computes them only when `log_step()` is true.
STATS_PREFIX = "stats/"
_LOG_STEP = contextvars.ContextVar("md_train_log_step", default=False)


def log_step() -> bool:
    """Whether the step whose loss is being computed will be written to the metrics log:
    diagnostics (`STATS_PREFIX`) cost nothing on the other steps."""
    return _LOG_STEP.get()


def training_identity(
    config: dict[str, Any] | None, run_control: frozenset[str] = RUN_CONTROL_FIELDS
) -> dict[str, Any]:
    """The saved config without its run-control fields: what a resume must match."""
    return {k: v for k, v in (config or {}).items() if k not in run_control}


@dataclass(frozen=True)
class LoopSettings:
    iterations: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_start_lr: float
    seed: int
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False
    log_every: int = 10
    checkpoint_every: int = 100
    grad_clip: float = 0.0  # 0 = off
    stop_after: int = 0  # stop (as if interrupted) after this many iterations in this run; 0 = off
    progress: bool = True
    # DDP only (several ranks): BatchNorm over the global batch; DDP's search for parameters
    # that a step leaves without gradient (needed when some outputs feed no loss).
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False
    run_control: frozenset[str] = RUN_CONTROL_FIELDS  # config fields a resume may change


def loop_settings(
    cfg: recipe.RunConfig,
    iterations: int,
    *,
    sync_batchnorm: bool = True,
    find_unused_parameters: bool = False,
) -> LoopSettings:
    """The loop's settings from a training command's config (`iterations`: resolved, e.g.
    the task's default for iterations=0; warm-up never longer than the run)."""
    return LoopSettings(
        iterations=iterations,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        warmup_iters=min(cfg.warmup_iters, iterations),
        warmup_start_lr=cfg.warmup_start_lr,
        seed=cfg.seed,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        stop_after=cfg.stop_after,
        progress=cfg.progress,
        sync_batchnorm=sync_batchnorm,
        find_unused_parameters=find_unused_parameters,
        run_control=recipe.run_control_fields(type(cfg)),
    )


@dataclass(frozen=True)
class LoopResult:
    """What `train_loop` did in this invocation."""

    completed: bool  # False: stopped by stop_after; rerun with --resume to continue
    iteration: int  # iterations done so far (the run's total when completed)
    seconds: float  # wall time of this invocation's loop
    last: dict[str, float]  # the last step's loss parts (averaged over ranks)


def sidecar(out: Path, suffix: str) -> Path:
    """`teacher.pt` -> `teacher.<suffix>` (metrics.jsonl, loss.png, config.yaml)."""
    return out.with_name(out.stem + "." + suffix)


# What to do after a failed checkpoint write: the last resume file is intact (atomic saves)
# and is removed only after the final checkpoint is written.
_RESUME = "rerun with --resume: training continues from its last checkpoint"


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def to_device(
    batch: dict[str, Any],
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Move tensors (and lists of tensors) to `device`; images optionally channels_last."""

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            fmt = torch.channels_last if (channels_last and v.ndim == 4) else torch.preserve_format
            return v.to(device, non_blocking=True, memory_format=fmt)
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return [move(t) for t in v]
        return v

    return {k: move(v) for k, v in batch.items()}


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_loop(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Callable[[int], Iterable[dict[str, Any]]],
    settings: LoopSettings,
    *,
    out: Path,
    meta: dict[str, Any],
    device: torch.device,
    resume: bool = False,
    desc: str = "train",
    dist: distributed.DistEnv = distributed.SINGLE,
) -> LoopResult:
    """Train `model` and write `out` (+ metrics log, loss curve); returns a `LoopResult`.

    `batches(start)` yields the batches (this rank's part, under DDP) for iterations start,
    start+1, ...; `meta` goes into every checkpoint (task, model kind, model args, config,
    dataset fingerprint, ...). `loss_fn` gets the model to run forward (a DDP wrapper under
    DDP: `distributed.unwrap` reaches its methods).
    """
    s = settings
    main = dist.is_main
    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if dist.active and s.sync_batchnorm:
        model = distributed.convert_batchnorm(model, device)
    opt = recipe.make_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=(s.amp == "fp16"))
    start = _restore(model, opt, out, meta, device, s) if resume else 0  # every rank, one file
    net = (
        distributed.wrap(
            model,
            dist,
            device,
            find_unused_parameters=s.find_unused_parameters,
            sync_batchnorm=s.sync_batchnorm,
        )
        if dist.active
        else model
    )
    log = (
        MetricsLog(sidecar(out, "metrics.jsonl"), resume_from=start if resume else None)
        if main
        else None
    )  # rank 0's log; the others' losses reach it averaged

    def save_resume(iteration: int) -> None:
        if main:
            save_checkpoint(
                resume_path(out),
                {
                    **meta,
                    "iteration": iteration,
                    "weights": model.state_dict(),
                    "optimizer": opt.state_dict(),
                },
                then=_RESUME,
            )

    t0, done = time.perf_counter(), start  # done: iterations whose step has completed
    stopped = False  # by stop_after: the resume file holds the run
    last: dict[str, float] = {}
    bar = progress_bar(
        total=s.iterations,
        initial=start,
        desc=desc,
        disable=not (s.progress and main),
        dynamic_ncols=True,
        unit="it",
    )
    net.train()
    stream: Iterator[dict[str, Any]] = iter(batches(start))
    try:
        for it in range(start, s.iterations):
            if s.stop_after and it - start >= s.stop_after:
                save_resume(it)
                stopped = True
                break
            if it > start and it % s.checkpoint_every == 0:
                save_resume(it)
            logged = it % s.log_every == 0 or it == s.iterations - 1
            token = _LOG_STEP.set(logged)
            try:
                step = _step(net, opt, scaler, loss_fn, next(stream), it, s, device, dist)
            finally:
                _LOG_STEP.reset(token)
            last = {k: v for k, v in step.items() if not k.startswith(STATS_PREFIX)}
            done = it + 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()}, refresh=False)
            if log is not None and logged:
                lr = opt.param_groups[0]["lr"]
                stats = {k: v for k, v in step.items() if k.startswith(STATS_PREFIX)}
                losses = {f"loss/{k}": v for k, v in last.items()}
                log.write({"iteration": it, "lr": lr, **losses, **stats})
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; rank 0 keeps the finished steps
        save_resume(done)
        raise
    finally:
        bar.close()
        close = getattr(stream, "close", None)  # a generator's read-ahead stops here
        if close is not None:
            close()
    if not stopped:
        model.eval()
        if main:
            save_checkpoint(
                out,
                {**meta, "iteration": s.iterations, "weights": model.state_dict()},
                then=_RESUME,
            )
            resume_path(out).unlink(missing_ok=True)
            plot_loss_curves(sidecar(out, "metrics.jsonl"), sidecar(out, "loss.png"), title=desc)
    distributed.barrier(dist)
    return LoopResult(
        completed=not stopped,
        iteration=done if stopped else s.iterations,
        seconds=time.perf_counter() - t0,
        last=last,
    )


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: LossFn,
    batch: dict[str, Any],
    it: int,
    s: LoopSettings,
    device: torch.device,
    dist: distributed.DistEnv,
) -> dict[str, float]:
    distributed.seed_step(s.seed, it, dist)
    recipe.set_lr(
        opt,
        recipe.lr_at(
            it,
            lr=s.lr,
            iterations=s.iterations,
            warmup_iters=s.warmup_iters,
            warmup_start_lr=s.warmup_start_lr,
        ),
    )
    batch = to_device(batch, device, s.channels_last)
    with _autocast(device, s.amp), distributed.synced_normalisers(dist):
        losses = loss_fn(model, batch)
    total = losses["total"]
    # Averaged over ranks before the backward, so every rank sees the same (global) values
    # and a non-finite loss stops all ranks at once instead of leaving the others waiting.
    logged = distributed.mean_over_ranks(losses, dist)
    if not torch.isfinite(logged["total"]):
        parts = {k: float(v) for k, v in logged.items()}
        raise MdError(
            f"loss became non-finite at iteration {it} ({parts}); lower lr= or check the data"
        )
    opt.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    if s.grad_clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    scaler.step(opt)
    scaler.update()
    return {k: float(v) for k, v in logged.items()}


# Config fields added after md 0.1.0's first resume files, at the value that reproduces the
# behaviour from before they existed. Add a field here when it is added to a training config.
ADDED_FIELDS: dict[str, Any] = {
    "delta_stores": [],  # saved configs hold lists (JSON/YAML), not tuples
    "delta_repeat": 1,
    "init": "",
    "group_weights": "none",
    "group_field": "appearance",
    "seg_foreground": "fraction",  # the segmentation teacher's GAFF mask target
    "transfer_stats": True,  # run control (diagnostics only): never blocks a resume
}


def _restore(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    out: Path,
    meta: dict[str, Any],
    device: torch.device,
    s: LoopSettings,
) -> int:
    path = resume_path(out)
    if not path.exists():
        raise MdError(
            f"{path}: nothing to resume (no resume file beside {out.name}); run without --resume"
        )
    ckpt = load_checkpoint(path, task=meta.get("task"), model_kind=meta.get("model_kind"))
    then = training_identity(ckpt.get("config"), s.run_control)
    now = training_identity(meta.get("config"), s.run_control)
    # A field added to md after the run started is absent from its file: it was then what
    # the field's first default means, so at that value it does not block the resume.
    then = {**{k: v for k, v in ADDED_FIELDS.items() if k in now}, **then}
    if then != now:
        keys = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        diff = ", ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in keys[:4])
        more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
        raise MdError(
            f"{path}: the interrupted run used a different config ({diff}{more}); "
            "resume with the same options, or start over without --resume"
        )
    if ckpt.get("dataset_fingerprint") != meta.get("dataset_fingerprint"):
        raise MdError(
            f"{path}: the interrupted run used different data; resume with the same "
            "dataset, or start over without --resume"
        )
    model.load_state_dict(ckpt["weights"])
    opt.load_state_dict(ckpt["optimizer"])
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    return int(ckpt["iteration"])
