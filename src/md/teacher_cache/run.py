"""`md cache-teacher`: run the GAFF teacher once over a split and write its targets to a store.

`run(cfg)` reads top to bottom: teacher + data -> levels, image size -> store schema ->
provenance -> open or create the store (resume / refuse) -> `cache_shards` over the unwritten
shards (teacher here, a writer thread encoding and writing) -> run attributes -> summary.

With ``scheduler`` or ``workers`` this process is the coordinator of a Dask run
(`md.teacher_cache.cluster`): it creates or validates the store exactly as above, the
unwritten shards run as one task each on the workers, and the run attributes are written
last, once every task is done, after which the store must be complete.

What lies in the store: per fused level L ``features/L`` (fused features, MD eq. 2) and
``attention/L`` (teacher mask, eq. 3), ``sample_id``, ``group``, ``written``; with
``flip_views`` ``features_flip/L`` / ``attention_flip/L``; with ``bundle_inputs``
``inputs/visible``, ``inputs/thermal`` (reduced resolution) and ``labels`` or
``boxes`` + ``num_boxes`` (`md.teacher_cache.targets`); provenance attributes as in
`md.teacher_cache.provenance`. Sample i of the store is item i of the split's list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from tqdm import tqdm

from md.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Limit, check_limits, config_to_dict
from md.data import PairedDataset, dataset_fingerprint, open_dataset
from md.data.kaist import parse_bbgt
from md.data.transforms import thermal_side_divisor
from md.errors import ConfigError, DataError, MdError, StoreError
from md.models import TwoStreamTeacher
from md.models.checkpoint import file_sha256
from md.progress import progress_bar
from md.stores import (
    LevelSpec,
    StoreSchema,
    TargetStore,
    create_store,
    detection_extras,
    input_extras,
    open_or_create_store,
    segmentation_extras,
)
from md.stores.info import info
from md.stores.lock import WriterLock, writer_lock
from md.teacher_cache.cluster import DaskRun, cache_on_dask, make_job, parse_resources
from md.teacher_cache.delta import base_options, check_same_schema, open_base, open_request_dataset
from md.teacher_cache.delta import lineage as delta_lineage
from md.teacher_cache.loading import load_teacher
from md.teacher_cache.provenance import explain_refusal, identity_attrs
from md.teacher_cache.reference import record_reference
from md.teacher_cache.shards import ShardOptions, ShardStats, cache_shards
from md.train.recipe import resolve_device


@dataclass(frozen=True)
class CacheConfig:
    teacher: str = ""  # teacher checkpoint from `md train-teacher` (GAFF fusion)
    data: str = ""  # dataset root, KAIST or MFNet layout
    split: str = "train"  # reads DATA/<split>.txt; store sample i = line i
    store: str = ""  # store directory (or fsspec URL) to create or resume
    levels: tuple[str, ...] = ()  # levels to store; () = every GAFF level of the teacher
    codec: Literal["lossless", "compact", "compact-fine", "raw"] = "lossless"  # md.stores.codecs
    shard_size: int = 16  # samples per shard: the unit of writing, resuming and scale-out
    batch_size: int = 8  # teacher batch; batches never cross a shard
    flip_views: bool = False  # also store the teacher's outputs on mirrored inputs
    bundle_inputs: bool = False  # also store student-resolution inputs and labels
    thermal_factor: int = 0  # bundled thermal pixel factor (1, 4, 16, 64); needs bundle_inputs
    input_compression: Literal["zstd", "none"] = "zstd"  # bundled inputs; none: crc32c only
    overwrite: bool = False  # replace an existing store (else resume it, or refuse a foreign one)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16"] = "none"  # bf16 autocast of the teacher (default full fp32)
    num_workers: int = 0  # DataLoader processes reading images
    # Without DataLoader processes: batches a reading thread decodes ahead of the teacher
    # (md.data.prefetch; Pillow decodes with the GIL released); 0 = read in the teacher's thread.
    read_ahead: int = 2
    max_queued: int = 2  # computed shards waiting for the writer (memory bound)
    # Stop after N shards of this invocation (rerun resumes); 0 = off. With Dask: only the
    # first N unwritten shards are submitted.
    stop_after_shards: int = 0
    # Shard writer: auto = a child process on Linux (the zarr write path holds the GIL against
    # the teacher when on a thread; md.teacher_cache.writer), else a thread.
    writer: Literal["auto", "thread", "process"] = "auto"
    progress: bool = True  # progress bar on stderr
    # Dask scale-out (md.teacher_cache.cluster): one task per shard; `device` applies on workers.
    scheduler: str = ""  # address of a running Dask scheduler, e.g. tcp://HOST:8786
    workers: int = 0  # > 0: start a local Dask cluster of N worker processes, 1 thread each
    resources: str = ""  # Dask resources every shard task needs, e.g. GPU=1 (workers offer them)
    dask_timeout_s: float = 30.0  # seconds to reach the scheduler / to be without any worker
    # Delta store (md.teacher_cache.delta): cache only the frames of this request file
    # (md drift --select), in the base store's schema, with lineage pointing at the base.
    ids: str = ""
    base_store: str = ""  # the base store; "" = the request's base_store

    LIMITS: ClassVar[dict[str, Limit]] = {
        "shard_size": AT_LEAST_1, "batch_size": AT_LEAST_1, "num_workers": NON_NEGATIVE,
        "read_ahead": NON_NEGATIVE, "max_queued": AT_LEAST_1, "stop_after_shards": NON_NEGATIVE,
        "workers": NON_NEGATIVE, "dask_timeout_s": POSITIVE,
    }  # fmt: skip


def run(cfg: CacheConfig) -> dict[str, Any]:
    """Cache the teacher's targets for ``cfg.split`` into ``cfg.store``; returns a summary
    (see `_summary`). Finished shards of an earlier run are skipped."""
    check_limits(cfg)
    _check_config(cfg)
    teacher, ckpt = load_teacher(cfg.teacher)
    base, request = None, None
    if cfg.ids:
        ds, request = open_request_dataset(cfg.data, cfg.ids)
        base = open_base(cfg.base_store, request)
        cfg = replace(cfg, shard_size=base.shard_size)  # a delta is cut as its base is
    else:
        ds = open_dataset(cfg.data, split=cfg.split)
    if ds.task != teacher.task:
        raise MdError(
            f"{cfg.teacher}: a {teacher.task} teacher cannot cache {cfg.data} "
            f"({ds.layout} layout, {ds.task}); use a {ds.task} teacher"
        )
    # With Dask `device` applies on the workers (they check it); the coordinator runs on CPU.
    device = torch.device("cpu") if uses_dask(cfg) else resolve_device(cfg.device)
    if not uses_dask(cfg):  # with Dask the teacher runs on the workers; here it sizes the schema
        teacher.to(device)
    opts = shard_options(cfg, teacher, ds)
    if base is not None:
        opts = base_options(base, opts)
    schema = build_schema(teacher, len(ds), cfg, opts)
    if base is not None:
        check_same_schema(base, schema)
    teacher_sha256 = file_sha256(cfg.teacher)
    attrs = identity_attrs(
        schema=schema,
        strides=teacher.strides,
        ckpt=ckpt,
        teacher_sha256=teacher_sha256,
        fingerprint=dataset_fingerprint(ds),
        sample_ids=[s.id for s in ds.samples],
        split=f"request:{Path(cfg.ids).name}" if cfg.ids else cfg.split,
        image_size=opts.image_size,
        thermal_size=thermal_size(cfg, opts.image_size),
        amp=cfg.amp,
        thermal_factor=cfg.thermal_factor,
    )
    if base is not None and request is not None:
        attrs["lineage"] = delta_lineage(base, cfg.ids, request)
    with writer_lock(cfg.store) as lock:  # one writer per store, from before it is opened
        store = open_target_store(cfg, schema, attrs)
        summary = _cache(cfg, ds, teacher, store, opts, teacher_sha256, device, lock)
        store.close()
    return summary


def _cache(
    cfg: CacheConfig,
    ds: PairedDataset,
    teacher: TwoStreamTeacher,
    store: TargetStore,
    opts: ShardOptions,
    teacher_sha256: str,
    device: torch.device,
    lock: WriterLock,
) -> dict[str, Any]:
    """The unwritten shards of `store`, then the run attributes; returns the summary."""
    todo = store.missing_shards()
    bar, add = _progress(cfg, store.schema, todo)
    dask_run: DaskRun | None = None
    t0 = time.perf_counter()
    try:
        if uses_dask(cfg):
            dask_run = _run_on_dask(cfg, ds, store, opts, teacher_sha256, todo, bar, add)
            stats = dask_run.stats
        else:
            stats = cache_shards(teacher, ds, store, todo, opts, before_submit=lock.check,
                                 on_written=lambda shard, nbytes: add(len(shard.sample_ids), nbytes))  # fmt: skip
    finally:
        bar.close()
    seconds = dask_run.seconds if dask_run else time.perf_counter() - t0
    summary = _summary(cfg, store, stats, seconds, len(todo), device, dask_run)
    lock.check()  # a run that lost the store to another writer must not claim it
    # A no-op rerun leaves the record of the run that did the work, unless a kill took
    # that record (after the last shard, before this line): then the rerun records itself.
    if stats.shards or "last_run" not in store.attrs:
        store.set_attrs({"last_run": _run_attrs(cfg, summary)})  # last: after every shard
    if dask_run is not None:
        _check_dask_complete(store, dask_run.shards)
    if summary["complete"] and (stats.shards or "reference" not in store.attrs):
        summary["reference"] = record_reference(ds, store)  # for md drift; a few kB
    return summary


def _run_on_dask(
    cfg: CacheConfig,
    ds: PairedDataset,
    store: TargetStore,
    opts: ShardOptions,
    teacher_sha256: str,
    todo: list[int],
    bar: tqdm,
    add: Callable[[int, int], None],
) -> DaskRun:
    """This process as the coordinator: one Dask task per unwritten shard (the first
    ``stop_after_shards`` of them if set); no cluster is started when nothing is left. The
    bar's clock starts once the cluster is up and stops before it closes: its samples/s is
    the tasks' rate."""
    shards = todo[: cfg.stop_after_shards] if cfg.stop_after_shards else todo
    if not shards:
        return DaskRun(shards=[], stats=ShardStats(), seconds=0.0, startup_seconds=0.0,
                       scheduler=cfg.scheduler, workers=0)  # fmt: skip
    job = make_job(cfg.teacher, teacher_sha256, cfg.data, cfg.split, ds, store, cfg.device, opts)
    return cache_on_dask(
        job, shards, scheduler=cfg.scheduler, workers=cfg.workers, resources=cfg.resources,
        timeout_s=cfg.dask_timeout_s, on_start=bar.unpause, on_shard=add, on_done=bar.close,
    )  # fmt: skip


def uses_dask(cfg: CacheConfig) -> bool:
    """Whether this run is a Dask run (one task per shard on a cluster)."""
    return bool(cfg.scheduler or cfg.workers)


def _check_dask_complete(store: TargetStore, submitted: list[int]) -> None:
    """Every shard a task reported done must read as written now, in a fresh read."""
    lost = sorted(set(submitted) & set(store.missing_shards()))
    if lost:
        raise StoreError(
            f"{store.url}: shards {lost} read as unwritten although their Dask tasks finished "
            "(do the workers write to the same store as this process?); rerun to resume"
        )


def _check_config(cfg: CacheConfig) -> None:
    if not cfg.teacher or not cfg.data or not cfg.store:
        raise ConfigError(
            "cache-teacher needs teacher, data and store (--teacher, --data, --store)"
        )
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ConfigError(
            f"shard_size and batch_size must be >= 1 (got {cfg.shard_size}, {cfg.batch_size})"
        )
    if cfg.bundle_inputs and not cfg.thermal_factor:
        raise ConfigError(
            "--bundle-inputs needs --thermal-factor (1, 4, 16 or 64): the pixel "
            "factor of the student's low-resolution thermal"
        )
    if cfg.thermal_factor and not cfg.bundle_inputs:
        raise ConfigError("--thermal-factor only applies to bundled inputs; add --bundle-inputs")
    if cfg.input_compression != "zstd" and not cfg.bundle_inputs:
        raise ConfigError("--input-compression only applies to bundled inputs; add --bundle-inputs")
    if cfg.thermal_factor:
        thermal_side_divisor(cfg.thermal_factor)
    _check_dask_config(cfg)


def _check_dask_config(cfg: CacheConfig) -> None:
    if cfg.scheduler and cfg.workers:
        raise ConfigError(
            "pass --scheduler (an existing Dask cluster) or --workers N (a local one), not both"
        )
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 1 (got {cfg.workers}); 0 runs without Dask")
    if not uses_dask(cfg):
        if cfg.resources:
            raise ConfigError("--resources only applies to Dask runs; add --scheduler or --workers")
        return
    if cfg.num_workers:
        raise ConfigError(
            "--num-workers (DataLoader processes) cannot run inside Dask workers; drop it "
            "and add Dask workers instead (--workers N, or more `dask worker` processes)"
        )
    if cfg.dask_timeout_s <= 0:
        raise ConfigError(f"dask_timeout_s must be > 0 (got {cfg.dask_timeout_s})")
    parse_resources(cfg.resources)


def shard_options(cfg: CacheConfig, teacher: TwoStreamTeacher, ds: PairedDataset) -> ShardOptions:
    """How each shard is computed: levels, the split's image size, bundles, batching."""
    bundle_boxes = cfg.bundle_inputs and ds.task == "detection"
    return ShardOptions(
        levels=select_levels(teacher, cfg.levels, cfg.teacher),
        image_size=common_image_size(ds),
        batch_size=cfg.batch_size,
        flip_views=cfg.flip_views,
        thermal_factor=cfg.thermal_factor if cfg.bundle_inputs else 0,
        max_boxes=max_boxes(ds) if bundle_boxes else 0,
        amp=cfg.amp,
        num_workers=cfg.num_workers,
        read_ahead=cfg.read_ahead,
        max_queued=cfg.max_queued,
        stop_after_shards=cfg.stop_after_shards,
        writer=cfg.writer,
    )


def _progress(
    cfg: CacheConfig, schema: StoreSchema, todo: list[int]
) -> tuple[tqdm, Callable[[int, int], None]]:
    """A samples/s progress bar (finished shards pre-counted) and `add(samples, nbytes)`,
    called per written shard (on the writer thread, or as Dask results come in)."""
    done = schema.n - sum(len(schema.shard_range(k)) for k in todo)
    bar = progress_bar(total=schema.n, initial=done, desc="cache-teacher", unit="sample",
               disable=not cfg.progress, dynamic_ncols=True)  # fmt: skip
    megabytes = [0.0]

    def add(samples: int, nbytes: int) -> None:
        megabytes[0] += nbytes / 1e6
        bar.set_postfix_str(f"{megabytes[0]:.1f} MB written", refresh=False)
        bar.update(samples)

    return bar, add


def select_levels(teacher: TwoStreamTeacher, wanted: tuple[str, ...], path: str) -> tuple[str, ...]:
    """`wanted` in pyramid order, or all the teacher's GAFF levels; refuse unfused ones."""
    fused = teacher.levels
    if not wanted:
        return fused
    bad = [lv for lv in wanted if lv not in fused]
    if bad:
        raise ConfigError(
            f"{path}: level(s) {','.join(bad)} are not fused by this teacher "
            f"(no GAFF targets there); pick --levels among {','.join(fused)}"
        )
    return tuple(lv for lv in fused if lv in wanted)


def common_image_size(ds: PairedDataset) -> tuple[int, int]:
    """(H, W) shared by every image of the split, read from file headers (no decoding)."""
    first = ds.samples[0].visible_path
    size = _header_size(first)
    for sample in ds.samples[1:]:
        other = _header_size(sample.visible_path)
        if other != size:
            raise DataError(
                f"{sample.visible_path}: size {other[0]}x{other[1]} differs from {first} "
                f"({size[0]}x{size[1]}); store arrays are fixed-shape: resize the split to one "
                "size, or cache each size as its own split (list file)"
            )
    return size[1], size[0]


def _header_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file from its header; `DataError` if it is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:  # PIL raises many types for damaged files
        raise DataError(
            f"{path}: unreadable image ({type(e).__name__}); re-copy or re-export the file"
        ) from None


def max_boxes(ds: PairedDataset) -> int:
    """Most boxes in one annotation of the split (>= 1: the bundled array must be non-empty)."""
    return max([1, *(len(parse_bbgt(s.target_path)["boxes"]) for s in ds.samples)])


def thermal_size(cfg: CacheConfig, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of the bundled low-resolution thermal, or None without bundled inputs."""
    if not cfg.bundle_inputs:
        return None
    d = thermal_side_divisor(cfg.thermal_factor)
    return max(1, image_size[0] // d), max(1, image_size[1] // d)


def build_schema(
    teacher: TwoStreamTeacher, n: int, cfg: CacheConfig, opts: ShardOptions
) -> StoreSchema:
    """The store layout; feature-map sizes come from a probe forward at the image size."""
    device = next(teacher.parameters()).device
    zeros = torch.zeros(1, 3, *opts.image_size, device=device)
    with torch.inference_mode():
        feats = teacher.forward_features(zeros, zeros[:, :1])["features"]
    levels = tuple(
        LevelSpec(
            lv, feats[lv].shape[1], feats[lv].shape[2], feats[lv].shape[3], teacher.strides[lv]
        )
        for lv in opts.levels
    )
    extras: tuple[Any, ...] = ()
    low = thermal_size(cfg, opts.image_size)
    if low is not None:
        compressed = cfg.input_compression == "zstd"
        extras = input_extras(opts.image_size, low, compressed=compressed) + (
            segmentation_extras(opts.image_size)
            if teacher.task == "segmentation"
            else detection_extras(opts.max_boxes)
        )
    return StoreSchema(
        n=n,
        shard_size=cfg.shard_size,
        levels=levels,
        codec=cfg.codec,
        task=str(teacher.task),
        flips=cfg.flip_views,
        extras=extras,
    )


def open_target_store(cfg: CacheConfig, schema: StoreSchema, attrs: dict[str, Any]) -> TargetStore:
    """Create the store (replacing it with ``overwrite``), or resume it if it is this run's;
    a store of another teacher, other data or other options is refused in one line."""
    if cfg.overwrite:
        return create_store(cfg.store, schema, attrs, overwrite=True)
    try:
        return open_or_create_store(cfg.store, schema, attrs)
    except StoreError:
        explain_refusal(cfg.store, schema, attrs, cfg.teacher, cfg.data)
        raise


def _summary(
    cfg: CacheConfig,
    store: TargetStore,
    stats: ShardStats,
    seconds: float,
    todo: int,
    device: torch.device,
    dask_run: DaskRun | None = None,
) -> dict[str, Any]:
    """Run summary: counts, timings, and per stored array the bytes per written sample.
    Dask runs add ``dask`` (scheduler, workers, startup seconds); their ``device`` is the
    workers' and ``forward_samples_per_s`` is per worker."""
    report = info(store.url)
    where = (",".join(dask_run.devices) or cfg.device) if dask_run else str(device)
    return {
        "store": store.url,
        "samples": store.n,
        "complete": report["complete"],
        "missing_shards": report["missing_shards"],
        "shards_written": stats.shards,
        "shards_skipped": store.num_shards - todo,
        "samples_written": stats.samples,
        "megabytes_written": stats.bytes / 1e6,
        "seconds": seconds,
        "samples_per_s": stats.samples / seconds if seconds > 0 else None,
        "forward_samples_per_s": (
            stats.samples / stats.forward_seconds if stats.forward_seconds > 0 else None
        ),
        "bytes_per_sample": report["bytes_per_sample"],
        "device": where,
        "codec": cfg.codec,
        "dask": dask_run.to_json() if dask_run else None,
    }


def _run_attrs(cfg: CacheConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Informational attributes of the latest run (never compared on resume)."""
    return {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher_path": str(Path(cfg.teacher).resolve()),
        "data_path": str(Path(cfg.data).resolve()),
        "config": config_to_dict(cfg),
        "device": summary["device"],
        "complete": summary["complete"],
        "shards_written": summary["shards_written"],
        "samples_per_s": summary["samples_per_s"],
        "dask": summary["dask"],
    }
