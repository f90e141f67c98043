"""Per-image latency at batch 1 (the paper's runtime columns): teacher, MD student and
visible-only student, untrained (latency does not depend on weights), at 640x512 by default.

Models are built as the training commands build them at ``width`` (1 = the paper's
ResNet-18) and timed with `md.eval.runtime.latency_ms` (warm-up, synchronised, median).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


def _random_frames(graph: Any, count: int, seed: int = 0) -> Iterator[list[np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    h, w = graph.image_hw
    for _ in range(count):
        vis = torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8).numpy()
        if graph.thermal_hw is None:
            yield [vis]
        else:
            th = torch.randint(0, 256, (1, 1, *graph.thermal_hw), generator=g, dtype=torch.uint8)
            yield [vis, th.numpy()]


def bench_exported(
    *,
    task: str = "detection",
    size: tuple[int, int] = (640, 512),
    width: float = 1.0,
    head_channels: int = 128,
    head_input: str = "attended",
    threads: tuple[int, ...] = (1, 2),
    warmup: int = 3,
    repeats: int = 10,
    calib_frames: int = 8,
    score_thresh: float = 0.05,
) -> dict[str, Any]:
    """fp32 torch vs fp32 ONNX Runtime vs int8 ONNX Runtime, batch 1 on the CPU, per thread
    count: ``{"models": {name: {"bytes": {...}, "threads": {t: {torch_fp32, onnx_fp32,
    onnx_int8}}}}}``. torch runs the checkpoint path (float frames, forward, the head's
    predict), ONNX Runtime the exported graph (uint8 frames in, NMS inside). Untrained
    models (latency does not depend on the weights; int8 ranges are calibrated on
    `calib_frames` random frames); `score_thresh` 0.05 keeps NMS light in both."""
    from md.deploy.export import ExportOptions, build_graph, export_checkpoint, require_onnx
    from md.deploy.exported import onnx_session
    from md.deploy.quantize import export_int8
    from md.train.checkpoint import save_checkpoint

    require_onnx()
    w, h = size
    specs: dict[str, dict[str, Any]] = {
        "md_student": {"levels": LEVELS, "in_channels": 6, "head_input": head_input},
        "visible_only_student": {"levels": (), "in_channels": 3},
    }
    before = torch.get_num_threads()
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="md-bench-") as tmp:
            for name, extra in specs.items():
                args = model_args(
                    "student", task, width=width, head_channels=head_channels, **extra
                )
                model = build_model("student", task, **args)
                ckpt = Path(tmp) / f"{name}.pt"
                config = {"thermal_factor": 16 if extra["in_channels"] == 6 else "none"}
                save_checkpoint(
                    ckpt,
                    {"task": task, "model_kind": "student", "model_args": args,
                     "config": config, "weights": model.state_dict(), "iteration": 0},
                )  # fmt: skip
                opts = ExportOptions(size=size, batch=1, score_thresh=score_thresh)
                fp32, int8 = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.int8.onnx"
                export_checkpoint(ckpt, fp32, opts)
                graph, _ = build_graph(ckpt, opts, onnx_nms=False)
                frames = _random_frames(graph, calib_frames)
                export_int8(ckpt, int8, opts, calib="random frames", frames=frames)
                feed = next(_random_frames(graph, 1, seed=1))
                inputs = graph.model_inputs(
                    torch.from_numpy(feed[0]), torch.from_numpy(feed[1]) if len(feed) > 1 else None
                )
                # the checkpoint path: 6-channel cat (unfolded) as md evaluate model feeds it
                x = (
                    inputs[0]
                    if extra["in_channels"] == 3
                    else torch.cat([inputs[0][:, :3], inputs[0][:, 3:4].expand(-1, 3, -1, -1)], 1)
                )
                model.eval()

                def torch_path(m: Any = model, x: torch.Tensor = x) -> Any:
                    pred = m(x)["pred"]
                    if task == "detection":
                        return m.head.predict(pred, score_thresh=score_thresh)
                    return m.head.predict(pred)

                per_threads: dict[str, Any] = {}
                for t in threads:
                    torch.set_num_threads(t)
                    row: dict[str, Any] = {"torch_fp32": latency_ms(torch_path, torch.device("cpu"),
                                                    warmup=warmup, repeats=repeats)}  # fmt: skip
                    for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
                        sess = onnx_session(path, threads=t)
                        names = [i.name for i in sess.get_inputs()]
                        run_feed = dict(zip(names, feed, strict=True))

                        def run(s: Any = sess, f: dict[str, np.ndarray] = run_feed) -> Any:
                            return s.run(None, f)

                        row[key] = latency_ms(
                            run, torch.device("cpu"), warmup=warmup, repeats=repeats
                        )
                    base = row["torch_fp32"]["median_ms"]
                    row["int8_vs_torch_fp32"] = row["onnx_int8"]["median_ms"] / base
                    row["onnx_fp32_vs_torch_fp32"] = row["onnx_fp32"]["median_ms"] / base
                    per_threads[str(t)] = row
                results[name] = {
                    "bytes": {
                        "checkpoint": ckpt.stat().st_size,
                        "onnx_fp32": fp32.stat().st_size,
                        "onnx_int8": int8.stat().st_size,
                        "int8_vs_fp32": int8.stat().st_size / fp32.stat().st_size,
                    },
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "threads": per_threads,
                }
    finally:
        torch.set_num_threads(before)
    return {
        "benchmark": "latency-exported",
        "task": task,
        "image_size": [w, h],
        "batch_size": 1,
        "width": width,
        "md_student_head_input": head_input,
        "device": "cpu",
        "score_thresh": score_thresh,
        "models": results,
    }
