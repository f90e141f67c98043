"""The MD training recipe (§4.2): SGD, linear warm-up from 1e-6 over 500 iterations, cosine.

`RecipeConfig` holds the recipe's fields and `RunConfig` adds what every training command
sets about its run (device, precision, loader workers, logging and checkpoint cadence); both
training commands' configs inherit `RunConfig`, and `SIZE_PRESETS` sizes both alike.

Determinism: every source of randomness in a step is seeded from (seed, iteration), so a run
resumed at iteration k takes exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from md.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Limit
from md.data.class_weights import dataset_class_weights
from md.errors import ConfigError


@dataclass(frozen=True)
class RecipeConfig:
    """The MD §4.2 recipe fields shared by every training command's config."""

    iterations: int = 0  # 0 = the task's default (3,500 detection / 14,000 segmentation)
    batch_size: int = 16
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_start_lr: float = 1e-6
    seed: int = 0

    # Checked when the config is loaded (md.config.check_limits), with every subclass's own.
    LIMITS: ClassVar[dict[str, Limit]] = {
        "iterations": NON_NEGATIVE, "batch_size": AT_LEAST_1, "lr": POSITIVE,
        "momentum": Limit(0, high=1), "weight_decay": NON_NEGATIVE,
        "warmup_iters": NON_NEGATIVE, "warmup_start_lr": NON_NEGATIVE, "seed": NON_NEGATIVE,
    }  # fmt: skip


T = TypeVar("T")

_RUN_CONTROL = "run_control"  # field metadata key, see `run_control`


def run_control(default: T) -> T:
    """A config field that steers a run but does not change what it computes (device, workers,
    logging cadence, stopping early): a resume may change it and still reach the same weights
    (`run_control_fields`, `md.train.loop.training_identity`)."""
    return dataclasses.field(default=default, metadata={_RUN_CONTROL: True})


def run_control_fields(cls: type) -> frozenset[str]:
    """The names of `cls`'s fields declared with `run_control`."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(_RUN_CONTROL))


@dataclass(frozen=True)
class RunConfig(RecipeConfig):
    """The recipe plus the run settings every training command shares; `md.train.loop`
    builds its `LoopSettings` from these (`loop_settings`)."""

    device: str = run_control("auto")  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast dtype on CUDA
    channels_last: bool = False
    num_workers: int = run_control(0)  # DataLoader worker processes
    log_every: int = run_control(10)  # iterations between metrics-log records
    checkpoint_every: int = run_control(100)  # iterations between resume checkpoints
    stop_after: int = run_control(0)  # stop after N iterations of this run (resume later); 0 = off
    progress: bool = run_control(True)

    LIMITS: ClassVar[dict[str, Limit]] = {
        "num_workers": NON_NEGATIVE, "log_every": AT_LEAST_1, "checkpoint_every": AT_LEAST_1,
        "stop_after": NON_NEGATIVE,
    }  # fmt: skip


# Model-size fields both training commands have (the student's head and width match the
# teacher's).
MODEL_LIMITS: dict[str, Limit] = {
    "width": NON_NEGATIVE, "head_channels": AT_LEAST_1, "class_weights": POSITIVE,
}  # fmt: skip

# Run sizes, the same for `md train-teacher` and `md train-student` (each command adds its own
# extras): same widths and head channels, so a student fits the stores of its teacher.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on 2 CPU cores: tests and smoke runs.
    "cpu-tiny": {"width": 0.125, "head_channels": 32, "class_weighting": "enet",
                 "batch_size": 4, "iterations": 20, "warmup_iters": 5,
                 "log_every": 2, "checkpoint_every": 10},
    # The demo's size: a few minutes on 2 CPU cores at the synthetic default resolution.
    "cpu-demo": {"width": 0.25, "head_channels": 64, "class_weighting": "enet",
                 "batch_size": 8, "iterations": 400, "warmup_iters": 50,
                 "log_every": 10, "checkpoint_every": 100},
    # The paper's recipe on a GPU.
    "gpu-full": {"width": 1.0, "batch_size": 16, "iterations": 0, "warmup_iters": 500,
                 "amp": "bf16", "channels_last": True, "num_workers": 8, "device": "cuda"},
}  # fmt: skip


TASK_ITERATIONS = {"detection": 3500, "segmentation": 14000}  # MD §4.2, for iterations=0


def presets(extras: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """`SIZE_PRESETS` with a command's own extras per preset name (new dicts)."""
    extras = extras or {}
    unknown = sorted(set(extras) - set(SIZE_PRESETS))
    if unknown:
        raise ValueError(f"extras for presets {unknown} that SIZE_PRESETS lacks")
    return {name: {**values, **extras.get(name, {})} for name, values in SIZE_PRESETS.items()}


def resolve_class_weights(cfg: Any, ds: Any) -> Any:
    """Fill `cfg.class_weights` from the training labels when `class_weighting` asks for it."""
    if cfg.task != "segmentation" or cfg.class_weighting == "none" or cfg.class_weights:
        return cfg
    return dataclasses.replace(cfg, class_weights=dataset_class_weights(ds))


def lr_at(
    iteration: int, *, lr: float, iterations: int, warmup_iters: int, warmup_start_lr: float
) -> float:
    """Learning rate for 0-based `iteration`: linear warm-up, then cosine decay to 0."""
    if warmup_iters > 0 and iteration < warmup_iters:
        t = iteration / warmup_iters
        return warmup_start_lr + (lr - warmup_start_lr) * t
    span = max(1, iterations - warmup_iters)
    t = min(1.0, (iteration - warmup_iters) / span)
    return 0.5 * lr * (1.0 + math.cos(math.pi * t))


def make_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on norm layers and biases (1-D parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def step_seed(seed: int, iteration: int) -> int:
    """A 63-bit seed for one (run seed, iteration) pair, independent of what ran before."""
    rng = np.random.Generator(np.random.PCG64([seed, iteration, 0x6D64]))
    return int(rng.integers(0, 2**63 - 1))


def seed_step(seed: int, iteration: int) -> None:
    """Seed torch, numpy and random for one step (dropout, augmentation, init)."""
    s = step_seed(seed, iteration)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; a CUDA device this machine lacks, or a
    name torch does not know, is a one-line `ConfigError` that names ``device=cpu``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device={device} is not a device name: use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device}, but this machine has no usable CUDA (torch "
                f"{torch.__version__}); pass device=cpu (or device=auto), e.g. after --preset "
                "gpu-full"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device}, but this machine has {torch.cuda.device_count()} CUDA "
                "device(s); pick one of them, or device=auto"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device={device} is not supported: use auto, cpu, cuda or cuda:N")
    return dev
