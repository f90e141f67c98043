"""`md bench ...`: the benchmarks of md.bench, each printing JSON.

Commands that need a teacher, store or dataset take ``--teacher/--store/--data``; left out,
a tiny synthetic set-up (`md data synth` + cpu-tiny teacher + lossless store) is built in a
temporary folder, so ``md bench X`` runs standalone (figures are then labelled tiny:
``"inputs": {"synthetic": true}``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import click

from md.cli.data import _Size

TASK = click.Choice(["detection", "segmentation"])


@click.group()
def bench() -> None:
    """Benchmarks (codecs, latency, train-step, loader, cache); each prints JSON."""


def _inputs_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--data/--teacher/--store/--task/--device/--threads/--json, shared by the commands."""
    opts = [
        click.option(
            "--data",
            default=None,
            type=click.Path(file_okay=False),
            help="Dataset root (KAIST / MFNet layout); default: tiny synthetic.",
        ),
        click.option(
            "--teacher",
            default=None,
            type=click.Path(dir_okay=False),
            help="Teacher checkpoint; default: a cpu-tiny teacher trained here.",
        ),
        click.option(
            "--store",
            default=None,
            help="Teacher-target store of DATA's train split; default: cached here.",
        ),
        click.option(
            "--task",
            type=TASK,
            default="detection",
            show_default=True,
            help="Task of the synthetic set-up (ignored when --data is given).",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N."
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=0),
            default=0,
            help="torch CPU threads (0: torch's default).",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print JSON (the only output format; accepted for scripts).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@contextlib.contextmanager
def _setup(
    data: str | None,
    teacher: str | None,
    store: str | None,
    task: str,
    need_store: bool = True,
    size: tuple[int, int] | None = None,
    teacher_width: float | None = None,
) -> Iterator[Any]:
    """The user's inputs, or a synthetic set-up in a temporary folder (removed after): tiny
    by default; `size` (W, H) and a cpu-demo teacher of `teacher_width` when given."""
    from md.bench.setup import ensure_setup

    extra: dict[str, Any] = {}
    if size is not None:
        extra["size"] = size
        extra["n_train"] = 32  # two shards of 16
    if teacher_width is not None:  # cpu-demo at that width, one step: timings need no training
        extra["teacher_preset"] = "cpu-demo"
        extra["teacher_overrides"] = (f"width={teacher_width}", "iterations=1")
    with tempfile.TemporaryDirectory(prefix="md-bench-") as tmp:
        if not (data and teacher and (store or not need_store)):
            click.echo("building a synthetic set-up (data, teacher, store) ...", err=True)
        yield ensure_setup(
            tmp,
            data=data,
            teacher=teacher,
            store=store,
            task=task,  # type: ignore[arg-type]
            need_store=need_store,
            **extra,
        )


def _emit(report: dict[str, Any], inputs: Any = None) -> None:
    if inputs is not None:
        report["inputs"] = {
            "data": inputs.data,
            "teacher": inputs.teacher,
            "store": inputs.store or None,
            "synthetic": inputs.synthetic,
        }
    click.echo(json.dumps(report, indent=2))


def _threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int = 0, **kwargs: Any) -> Any:
        if threads:
            import torch

            torch.set_num_threads(threads)
        return fn(*args, **kwargs)

    return wrapper


@bench.command("codecs")
@_inputs_options
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Samples whose features are encoded.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Store shard size.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Speed rounds (best).",
)
@_threads
def codecs(
    data: str | None,
    teacher: str | None,
    store: str | None,
    task: str,
    device: str,
    as_json: bool,
    samples: int,
    shard_size: int,
    repeats: int,
) -> None:
    """Per codec preset: bytes/sample, ratio vs fp32, cosine, max abs error, MB/s."""
    from md.bench.codecs import bench_codecs

    with _setup(data, teacher, store, task, need_store=False) as s:
        _emit(
            bench_codecs(
                s.teacher,
                s.data,
                samples=samples,
                shard_size=shard_size,
                repeats=repeats,
                device=device,
            ),
            s,
        )


@bench.command("latency")
@click.option("--task", type=TASK, default="detection", show_default=True, help="Task head.")
@click.option(
    "--size",
    type=_Size(),
    default="640x512",
    show_default=True,
    help="Image size WxH (the paper: 640x512; smaller for quick CPU checks).",
)
@click.option(
    "--width",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Trunk width (1 = the paper's ResNet-18).",
)
@click.option(
    "--head-channels",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Neck / PSP channels of the task heads.",
)
@click.option(
    "--head-input",
    type=click.Choice(["attended", "transfer", "trunk"]),
    default="attended",
    show_default=True,
    help="The MD student's head input (trunk: transfer modules are training-only).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Autocast dtype (float32: none).",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option(
    "--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed calls."
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Timed calls."
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    help="torch CPU threads (0: torch's default).",
)
@click.option(
    "--exported",
    is_flag=True,
    help="Also the exported students on the CPU: fp32 torch vs fp32 ONNX Runtime vs int8, "
    "file bytes (needs the export extra).",
)
@click.option(
    "--exported-threads",
    default="1,2",
    show_default=True,
    help="--exported: CPU thread counts to time, comma-separated.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the only output format).")
@_threads
def latency(
    task: str,
    size: tuple[int, int],
    width: float,
    head_channels: int,
    head_input: str,
    dtype: str,
    device: str,
    warmup: int,
    repeats: int,
    exported: bool,
    exported_threads: str,
    as_json: bool,
) -> None:
    """Batch-1 latency of teacher, MD student and visible-only student (untrained)."""
    from md.bench.latency import bench_exported, bench_latency

    try:
        counts = tuple(int(t) for t in exported_threads.split(","))
    except ValueError:
        raise click.BadParameter(
            "use thread counts like 1,2", param_hint="--exported-threads"
        ) from None
    report = bench_latency(
        task=task,
        size=size,
        width=width,
        head_channels=head_channels,
        head_input=head_input,
        device=device,
        dtype=dtype,
        warmup=warmup,
        repeats=repeats,
    )
    if exported:
        report["exported"] = bench_exported(
            task=task,
            size=size,
            width=width,
            head_channels=head_channels,
            head_input=head_input,
            threads=counts,
            warmup=warmup,
            repeats=repeats,
        )
    _emit(report)


@bench.command("train-step", context_settings={"ignore_unknown_options": False})
@_inputs_options
@click.option(
    "--preset",
    type=click.Choice(["cpu-tiny", "cpu-demo", "gpu-full"]),
    default=None,
    help="md train-student preset (its width must match the teacher's).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Student batch."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed steps per mode.",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps."
)
@click.argument("overrides", nargs=-1)
@_threads
def train_step(
    data: str | None,
    teacher: str | None,
    store: str | None,
    task: str,
    device: str,
    as_json: bool,
    preset: str | None,
    batch_size: int,
    steps: int,
    warmup: int,
    overrides: tuple[str, ...],
) -> None:
    """Student step ms: offline (store), online (live teacher), in memory; peak memory.
    OVERRIDES are md train-student key=value fields."""
    from md.bench.train_step import bench_train_step

    with _setup(data, teacher, store, task) as s:
        _emit(
            bench_train_step(
                store=s.store,
                data=s.data,
                teacher=s.teacher,
                preset=preset,
                overrides=(f"batch_size={batch_size}", *overrides),
                device=device,
                warmup=warmup,
                steps=steps,
            ),
            s,
        )


@bench.command("loader")
@_inputs_options
@click.option(
    "--size",
    type=_Size(),
    default="640x512",
    show_default=True,
    help="WxH of the synthetic set-up built when --data/--store are left out (the paper's "
    "640x512 with a width-1 teacher; takes minutes on a CPU).",
)
@click.option(
    "--preset",
    type=click.Choice(["cpu-tiny", "cpu-demo", "gpu-full"]),
    default=None,
    help="md train-student preset (its width must match the teacher's).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Batch."
)
@click.option(
    "--workers", default="0", show_default=True, help="Worker counts to time, e.g. 0,1,2."
)
@click.option(
    "--batches",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Timed batches per worker count and of the read path.",
)
@click.option(
    "--step-samples-per-s",
    type=click.FloatRange(min=0, min_open=True),
    default=680.0,
    show_default=True,
    help="Step rate to feed (a GPU step at 640x512 b16); workers_to_feed is for it.",
)
@click.option(
    "--measure-step",
    is_flag=True,
    help="Time the training step here instead (its samples/s replaces --step-samples-per-s).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed training steps (with --measure-step).",
)
@click.argument("overrides", nargs=-1)
@_threads
def loader(
    data: str | None,
    teacher: str | None,
    store: str | None,
    task: str,
    device: str,
    as_json: bool,
    size: tuple[int, int],
    preset: str | None,
    batch_size: int,
    workers: str,
    batches: int,
    step_samples_per_s: float,
    measure_step: bool,
    steps: int,
    overrides: tuple[str, ...],
) -> None:
    """Read path vs the zstd+crc32c bound, loader samples/s (per core) per worker count,
    workers_to_feed a step rate, peak RSS. OVERRIDES are md train-student key=value fields."""
    from md.bench.loader import bench_loader_full

    counts = [int(w) for w in workers.split(",") if w.strip()]
    with _setup(data, teacher, store, task, size=size, teacher_width=1.0) as s:
        width = [] if (data and store) else ["width=1.0"]  # the student of the teacher built here
        _emit(
            bench_loader_full(
                store=s.store,
                data=s.data,
                preset=preset,
                overrides=(f"device={device}", *width, *overrides),
                workers=counts,
                batches=batches,
                read_batches=batches,
                batch_size=batch_size,
                step_samples_per_s=None if measure_step else step_samples_per_s,
                steps=steps,
            ),
            s,
        )


@bench.command("cache")
@_inputs_options
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Teacher batch."
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Store shard size.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Interleaved rounds (the best of each is kept).",
)
@click.option(
    "--dask-workers",
    default="",
    show_default=False,
    help="Also time Dask runs on local clusters of these worker counts, e.g. 1,2 "
    "(adds a 'dask' section: samples/s vs the single process).",
)
@_threads
def cache(
    data: str | None,
    teacher: str | None,
    store: str | None,
    task: str,
    device: str,
    as_json: bool,
    batch_size: int,
    shard_size: int,
    repeats: int,
    dask_workers: str,
) -> None:
    """md cache-teacher samples/s vs the teacher's forward-only samples/s (and, with
    --dask-workers, vs Dask runs of 1, 2, ... worker processes)."""
    from md.bench.cache import bench_cache, bench_cache_dask

    try:
        counts = [int(w) for w in dask_workers.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(
            "comma-separated worker counts, e.g. 1,2", param_hint="--dask-workers"
        ) from None
    if any(n < 1 for n in counts):
        raise click.BadParameter("worker counts must be >= 1", param_hint="--dask-workers")
    with _setup(data, teacher, store, task, need_store=False) as s:
        report = bench_cache(
            s.teacher,
            s.data,
            batch_size=batch_size,
            shard_size=shard_size,
            repeats=repeats,
            device=device,
        )
        if counts:
            report["dask"] = bench_cache_dask(
                s.teacher,
                s.data,
                batch_size=batch_size,
                shard_size=shard_size,
                workers=counts,
                repeats=repeats,
                device=device,
            )
        _emit(report, s)
