"""Multi-process (DDP) training under ``torchrun``: the environment, the process group, the
model wrapper and the few collectives the training loop needs.

One process per rank; ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
rendezvous address. With ``WORLD_SIZE`` unset or 1 nothing here does anything, so a
single-process run computes exactly what it computed before DDP support existed.

What makes a W-rank step equal to a one-process step on the same global batch (up to float
summation order; `tests/student_train/test_distributed.py` pins it):

- each rank holds B / W samples and DDP averages the gradients over ranks, so every loss that
  is a mean over samples (Dice, F-MSE, unweighted CE, MSE at equal shapes) is exact;
- losses normalised by a count over the batch (positive anchors of the focal loss, the sum of
  class weights of weighted CE) ask `share_of_total` for the normaliser: inside
  `synced_normalisers` it is the count summed over ranks, divided by W, so the averaged
  gradient is that of the global normalisation;
- BatchNorm statistics are taken over the global batch: `convert_batchnorm` swaps every
  ``BatchNorm2d`` for ``torch.nn.SyncBatchNorm`` on CUDA, and for `SyncBatchNorm2d` (below)
  on CPU, where torch's refuses to run;
- per-step randomness is seeded per rank (`seed_step`): rank 0 draws what a single process
  draws, the others their own streams, so ranks never share e.g. dropout masks. Augmentations
  do not depend on it: the sampler keys them on the global sample position.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from md.errors import ConfigError, MdError
from md.models import normalisers
from md.models.normalisers import share_of_total as share_of_total  # re-exported
from md.models.normalisers import syncing_normalisers as syncing_normalisers  # re-exported
from md.train import recipe


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (one process = rank 0 of a world of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this node: picks the GPU

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


SINGLE = DistEnv()


def env_from(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (absent: one process)."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MdError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them); "
            "unset them for a single-process run"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise MdError(
            f"RANK={rank} is not in a world of WORLD_SIZE={world}; launch with "
            "torchrun, or unset WORLD_SIZE and RANK"
        )
    return DistEnv(rank, world, local)


def device_for(env: DistEnv, device: str) -> torch.device:
    """The config's ``device`` for this rank: under DDP ``auto`` / ``cuda`` -> cuda:LOCAL_RANK."""
    if not env.active:
        return recipe.resolve_device(device)
    if device.startswith("cuda:"):
        raise ConfigError(
            f"device={device} under torchrun: each process uses cuda:LOCAL_RANK; "
            "pass device=cuda (or auto)"
        )
    recipe.resolve_device(device)  # a CUDA this machine lacks: one line naming device=cpu
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device(device if device != "auto" else "cpu")
    if env.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={env.local_rank} but {torch.cuda.device_count()} GPUs are "
            "visible; start at most that many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, timeout_s: float) -> Iterator[None]:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) for the body; always leave it.

    ``timeout_s`` bounds every collective: a rank that died or hangs makes the others fail
    after that long instead of waiting forever (torchrun also stops them when one rank exits
    with an error).
    """
    if not env.active:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s)
        )
    except ValueError as e:  # env:// without MASTER_ADDR / MASTER_PORT: not under torchrun
        raise MdError(
            f"WORLD_SIZE={env.world_size} is set but the process group cannot start "
            f"({e}); launch with torchrun, or unset WORLD_SIZE"
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (NCCL: on this rank's GPU, set by `process_group`)."""
    if not env.active:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def mean_over_ranks(values: Mapping[str, Tensor], env: DistEnv) -> dict[str, Tensor]:
    """Detached scalars averaged over the ranks (one all-reduce); unchanged on one process."""
    if not env.active:
        return {k: v.detach() for k, v in values.items()}
    keys = list(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    dist.all_reduce(stacked)
    stacked /= env.world_size
    return dict(zip(keys, stacked.unbind(), strict=True))


# --- global loss normalisers -----------------------------------------------------------------


@contextlib.contextmanager
def synced_normalisers(env: DistEnv) -> Iterator[None]:
    """Inside: `share_of_total` all-reduces (the training step's loss, on every rank at once).
    Outside (evaluation, rank-0-only code, single process) it is local and collective-free."""
    with normalisers.synced(env.active):
        yield


# --- per-rank step seeds -----------------------------------------------------------------------


def seed_step(seed: int, iteration: int, env: DistEnv) -> None:
    """`recipe.seed_step` on rank 0 (what one process draws); an own stream on other ranks."""
    if env.rank == 0:
        recipe.seed_step(seed, iteration)
        return
    rank_seed = np.random.Generator(np.random.PCG64([seed, env.rank, 0x52])).integers(2**62)
    recipe.seed_step(int(rank_seed), iteration)


# --- BatchNorm over the global batch and the DDP wrapper ---------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum of the ranks' gradients (each rank's input
    feeds every rank's output)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch (all ranks),
    for CPU / gloo (``torch.nn.SyncBatchNorm`` runs on accelerators only).

    Each rank computes its per-channel count, mean and biased variance; one differentiable
    all-reduce of a (W, 2C + 1) table gathers them and the pooled mean / variance follow by
    the parallel-variance formula (no E[x²] − E[x]² cancellation). Gradients flow through the
    pooled statistics to every rank's input, as in one BatchNorm over the whole batch.
    Running statistics get the pooled values (unbiased variance), identical on every rank.
    Evaluation, or a single process, is plain ``BatchNorm2d``. Same parameters, buffers and
    state_dict keys as ``BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        assert self.momentum is not None, "cumulative BatchNorm averages are not supported"
        world, rank = dist.get_world_size(), dist.get_rank()
        xf = x.float()
        var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)  # (C,), (C,)
        count = xf.new_tensor([x.numel() / x.shape[1]])
        table = xf.new_zeros(world, 2 * mean.numel() + 1)
        table[rank] = torch.cat([count, mean, var])
        table = _AllReduceSum.apply(table)  # (W, 1 + 2C): every rank's count, mean, var
        counts, means, variances = (
            table[:, :1],
            table[:, 1 : 1 + mean.numel()],
            table[:, 1 + mean.numel() :],
        )
        n = counts.sum()
        g_mean = (counts * means).sum(0) / n
        g_var = (counts * (variances + (means - g_mean).pow(2))).sum(0) / n  # biased
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(g_mean.detach(), self.momentum)
                self.running_var.lerp_(g_var.detach() * n / (n - 1), self.momentum)
        shape = (1, -1, 1, 1)
        y = (xf - g_mean.view(shape)) * torch.rsqrt(g_var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm2d`` -> a synchronised one sharing its parameters and buffers (same
    state_dict); ``torch.nn.SyncBatchNorm`` on accelerators, `SyncBatchNorm2d` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if type(model) is nn.BatchNorm2d:
        synced = SyncBatchNorm2d(
            model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats
        )
        synced.weight, synced.bias = model.weight, model.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(synced, name, getattr(model, name))
        synced.train(model.training)
        return synced
    for name, child in model.named_children():
        model.add_module(name, convert_batchnorm(child, device))
    return model


def wrap(
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
    *,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = True,
) -> nn.Module:
    """DistributedDataParallel over `model` (already on `device`; BatchNorm already converted
    when `sync_batchnorm`). Buffers are broadcast from rank 0 each step only when BatchNorm is
    not synchronised (synchronised running statistics are equal on every rank anyway)."""
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 renames broadcast_buffers (deprecated there) to forward_sync_buffers.
    sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        else "broadcast_buffers"
    )
    options: dict[str, Any] = {sync: not sync_batchnorm}
    return DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters, **options
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (its methods, its prefix-free state_dict)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
