"""Loss normalisers that stay right when DDP splits a batch over ranks.

A torch-only leaf below the heads: the losses ask `share_of_total` for the count they
divide by, and the training step (`md.train.distributed.synced_normalisers`) switches on
the all-reduce for its loss; everywhere else (evaluation, one process) it is local.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch.distributed as dist
from torch import Tensor

_SYNC_NORMALISERS: ContextVar[bool] = ContextVar("md_sync_normalisers", default=False)


@contextlib.contextmanager
def synced(active: bool) -> Iterator[None]:
    """Inside, with `active`, `share_of_total` sums the count over ranks."""
    token = _SYNC_NORMALISERS.set(active)
    try:
        yield
    finally:
        _SYNC_NORMALISERS.reset(token)


def syncing_normalisers() -> bool:
    return _SYNC_NORMALISERS.get()


def share_of_total(count: Tensor, minimum: float = 1) -> Tensor:
    """The normaliser of a loss ``sum / count`` over a batch that DDP splits over ranks.

    One process: ``max(count, minimum)``. In `md.train.distributed.synced_normalisers` under
    W ranks: ``max(Σ_ranks count, minimum) / W``, so that DDP's average over ranks of
    ``sum_r / normaliser`` equals ``Σ sum_r / max(Σ count, minimum)``: the one-process loss on
    the global batch (and the ranks' logged values average to it).
    """
    if not syncing_normalisers():
        return count.clamp(min=minimum)
    total = count.detach().float().clone()
    dist.all_reduce(total)
    return total.clamp(min=minimum) / dist.get_world_size()


__all__ = ["share_of_total", "synced", "syncing_normalisers"]
