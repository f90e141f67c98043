"""Per-image latency at batch 1 (the paper's runtime columns): teacher, MD student and
visible-only student, untrained (latency does not depend on weights), at 640x512 by default.

Models are built as the training commands build them at ``width`` (1 = the paper's
ResNet-18) and timed with `md.eval.runtime.latency_ms` (warm-up, synchronised, median).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from md.eval.runtime import latency_ms
from md.models import build_model, model_args
from md.models.fold import fold_image_level
from md.models.resnet import LEVELS
from md.train.recipe import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_models(
    task: str, width: float, head_channels: int, head_input: str = "attended"
) -> dict[str, nn.Module]:
    """{teacher, md_student (6-ch, all levels), md_student_folded_stem (the same, its
    image-level stem folded to 4 channels: md.models.fold), visible_only_student (3-ch, no
    levels)}."""

    def build(kind: str, **kw: Any) -> nn.Module:
        args = model_args(kind, task, width=width, head_channels=head_channels, **kw)
        return build_model(kind, task, **args)

    md_student = build("student", levels=LEVELS, in_channels=6, head_input=head_input)
    return {
        "teacher": build("teacher", levels=LEVELS),
        "md_student": md_student,
        "md_student_folded_stem": fold_image_level(md_student),  # type: ignore[arg-type]
        "visible_only_student": build("student", levels=(), in_channels=3),
    }


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _inputs(name: str, size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, ...]:
    w, h = size
    if name == "teacher":
        return (torch.rand(1, 3, h, w, device=device), torch.rand(1, 1, h, w, device=device))
    channels = {"md_student": 6, "md_student_folded_stem": 4}.get(name, 3)
    return (torch.rand(1, channels, h, w, device=device),)


def bench_latency(
    *,
    task: str = "detection",
    size: tuple[int, int] = (640, 512),
    width: float = 1.0,
    head_channels: int = 128,
    head_input: str = "attended",
    device: str = "auto",
    dtype: str = "float32",
    warmup: int = 5,
    repeats: int = 20,
) -> dict[str, Any]:
    """``{"models": {name: {median_ms, min_ms, mean_ms, parameters}}, device, dtype, ...}``.
    ``dtype`` other than float32 runs the forward under autocast."""
    dev = resolve_device(device)
    results: dict[str, Any] = {}
    for name, model in build_models(task, width, head_channels, head_input).items():
        model.to(dev).eval()
        args = _inputs(name, size, dev)

        def forward(m: nn.Module = model, a: tuple[torch.Tensor, ...] = args) -> Any:
            with _autocast(dev, dtype):
                return m(*a)

        stats = latency_ms(forward, dev, warmup=warmup, repeats=repeats)
        results[name] = {**stats, "parameters": sum(p.numel() for p in model.parameters())}
        model.to("cpu")
    return {
        "benchmark": "latency",
        "task": task,
        "image_size": list(size),
        "batch_size": 1,
        "width": width,
        "md_student_head_input": head_input,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "models": results,
    }
