"""Resolving a `md train-student` run before it starts: open and check the store, the data
and the online teacher, refuse what does not fit (task, levels, width, flips, crops, shard
groups), then build the sample source, the sampler, the student and its loss (`prepare`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
from torch import nn

import md.student_train.provenance as prov
from md.config import config_to_dict
from md.data import PairedDataset, dataset_fingerprint, open_dataset
from md.data.class_weights import enet_weights, label_frequencies
from md.data.transforms import check_crop
from md.errors import ConfigError, MdError, StoreError
from md.models import LEVEL_BASE_CHANNELS, TwoStreamTeacher, load_model, num_classes
from md.models.checkpoint import file_sha256
from md.models.shared import check_levels
from md.stores import TargetStore, open_store
from md.student_train.config import StudentTrainConfig, crop_hw, thermal_factor_of
from md.student_train.loader import ALIGN, SampleSource, ShardAwareSampler
from md.student_train.model import build_student, student_args, student_loss_fn
from md.student_train.union import StoreUnion
from md.train import group_weights, recipe
from md.train.loop import LossFn


@dataclass
class Setup:
    """Everything `run` (and the loader benchmark) needs, resolved and checked."""

    cfg: StudentTrainConfig  # task, width and levels filled in
    source: SampleSource
    sampler: ShardAwareSampler
    model: nn.Module
    loss_fn: LossFn
    teacher: TwoStreamTeacher | None
    meta: dict[str, Any]
    iterations: int
    rank: int = 0  # this process's rank of world_size (DDP); its part of each batch
    world_size: int = 1


def prepare(cfg: StudentTrainConfig, *, rank: int = 0, world_size: int = 1) -> Setup:
    """Open and check the store / data / teacher; build the sample source, sampler, model.

    `rank` / `world_size`: this process's place in a DDP job (see `check_world`)."""
    cfg = check_world(cfg, world_size)
    _check_modes(cfg)
    ds = open_dataset(cfg.data, split=cfg.split) if cfg.data else None
    fingerprint = dataset_fingerprint(ds) if ds is not None else None
    if ds is not None and fingerprint is not None and cfg.image_cache:
        ds.use_decoded_cache(cfg.image_cache, fingerprint["sha256"])
    store = _open_stores(cfg)
    task = _resolve_task(cfg, ds, store)
    teacher, teacher_sha = _online_teacher(cfg, task)
    cfg = replace(cfg, task=task)
    cfg = _class_weights(cfg, ds, store)
    levels, width = _levels_and_width(cfg, store, teacher)
    cfg = replace(cfg, levels=levels, width=width)
    rows, ds_index = _rows(cfg, store, ds, fingerprint)
    source = _source(cfg, store, ds, rows, ds_index, teacher)
    model = build_student(cfg)
    if cfg.init:
        _init_weights(model, cfg.init)
    weights = _group_weights(cfg, ds, rows, ds_index)
    if source.target_levels is not None:  # offline: the store's maps must fit this student
        assert store is not None
        prov.check_store_shapes(
            store,
            prov.store_levels(store, levels),
            model.out_channels,
            model.strides,
            source.image_hw,
        )
    meta = {
        "task": task,
        "model_kind": "student",
        "model_args": student_args(cfg),
        "config": config_to_dict(cfg),
        "split": cfg.split,
        "lineage": {
            **_lineage(cfg, store, rows, teacher_sha),
            "group_weights": None if weights is None else weights.lineage(),
        },
        "dataset_fingerprint": fingerprint or _store_fingerprint(store),
        "world_size": world_size,
        # The distilled levels the task head reads; the others act only through the trunk.
        "head_levels": [lv for lv in levels if lv in getattr(model.head, "in_levels", levels)],
    }
    return Setup(
        cfg,
        source,
        _sampler(cfg, store, rows, len(ds) if ds is not None else 0),
        model,
        student_loss_fn(cfg, model, teacher, store.preset if store is not None else None, weights),
        teacher,
        meta,
        cfg.iterations or recipe.TASK_ITERATIONS[task],
        rank,
        world_size,
    )


def _open_stores(cfg: StudentTrainConfig) -> TargetStore | None:
    """The store, or with ``delta_stores`` the union of the base and its deltas."""
    if not cfg.store:
        if cfg.delta_stores:
            raise ConfigError("delta stores need a base store first: --store BASE --store DELTA")
        return None
    base = open_store(cfg.store)
    if not cfg.delta_stores:
        return base
    if cfg.data:
        raise ConfigError(
            "training on several stores reads their bundled inputs and labels: drop --data "
            "(cache the stores with --bundle-inputs)"
        )
    union = StoreUnion(base, [open_store(u) for u in cfg.delta_stores], cfg.delta_repeat)
    return cast(TargetStore, union)


def _init_weights(model: nn.Module, path: str) -> None:
    """Start from the weights of student checkpoint `path` (same architecture)."""
    loaded, ckpt = load_model(path)
    if ckpt["model_kind"] != "student":
        raise MdError(f"{path}: holds a {ckpt['model_kind']}; --init takes a student checkpoint")
    try:
        model.load_state_dict(loaded.state_dict())
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise MdError(
            f"{path}: its student does not fit this run's ({first}); pass the config it was "
            "trained with (width, levels, head_input, thermal factor)"
        ) from None


def check_world(cfg: StudentTrainConfig, world_size: int) -> StudentTrainConfig:
    """Refuse a global batch or shard-group count that does not split over the processes;
    fill in ``shard_groups`` (0 -> the number of processes)."""
    groups = cfg.shard_groups or world_size
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must divide by "
            f"the {world_size} processes; pass a multiple of {world_size} (each "
            f"process takes batch_size / {world_size})"
        )
    if groups < 1 or groups % world_size:
        raise ConfigError(
            f"shard_groups={cfg.shard_groups} must be a multiple of the "
            f"{world_size} processes (0 = one group per process)"
        )
    if cfg.batch_size % groups:
        raise ConfigError(
            f"batch_size={cfg.batch_size} does not split into shard_groups="
            f"{groups}; pass a batch_size that is a multiple of {groups}"
        )
    return replace(cfg, shard_groups=groups)


def _class_weights(
    cfg: StudentTrainConfig, ds: PairedDataset | None, store: TargetStore | None
) -> StudentTrainConfig:
    """ENet class weights from the training labels: the dataset's files, else the store's."""
    if cfg.task != "segmentation" or cfg.class_weighting == "none" or cfg.class_weights:
        return cfg
    if ds is not None:
        return recipe.resolve_class_weights(cfg, ds)
    if store is not None and "labels" in store.raw_names():
        rows = np.flatnonzero(store.written_mask())
        labels = (
            store.read(rows[i : i + 64], ["labels"])["labels"] for i in range(0, len(rows), 64)
        )
        frequencies = label_frequencies(labels, num_classes(cfg.task))
        return replace(cfg, class_weights=enet_weights(frequencies))
    raise MdError(
        "class_weighting=enet needs training labels: pass --data, a store made with "
        "--bundle-inputs, or class_weighting=none"
    )


def _sampler(
    cfg: StudentTrainConfig, store: TargetStore | None, rows: np.ndarray, ds_len: int
) -> ShardAwareSampler:
    """Over store rows (shard-aware), or over dataset indices (shards of one sample)."""
    n, shard_size = (store.n, store.shard_size) if store is not None else (ds_len, 1)
    shards = np.unique(rows // shard_size).size
    if shards < cfg.shard_groups:
        where = cfg.store if store is not None else cfg.data
        raise ConfigError(
            f"{where}: {shards} shards for shard_groups={cfg.shard_groups}; each "
            "group (each process) reads whole shards of its own: cache the store "
            "with a smaller --shard-size, or use fewer groups / processes"
        )
    mask = np.zeros(n, dtype=np.bool_)
    mask[rows] = True
    return ShardAwareSampler(
        n, shard_size, mask, cfg.batch_size, cfg.seed, cfg.window_shards, groups=cfg.shard_groups
    )


def _group_weights(
    cfg: StudentTrainConfig, ds: Any, rows: np.ndarray, ds_index: np.ndarray | None
) -> group_weights.GroupWeights | None:
    """`group_weights` resolved over the training samples (their ids and day/night)."""
    if cfg.group_weights in ("", group_weights.NONE):
        return None
    if ds is None:
        raise ConfigError("group_weights: needs data=DATA (the samples' groups come from it)")
    index = range(len(ds)) if ds_index is None else [int(i) for i in ds_index]
    samples = [ds.samples[i] for i in index]
    return group_weights.resolve(
        cfg.group_weights,
        cfg.group_field,
        cfg.data,
        [s.id for s in samples],
        [s.group for s in samples],
    )


def _lineage(
    cfg: StudentTrainConfig, store: TargetStore | None, rows: np.ndarray, teacher_sha: str | None
) -> dict[str, Any]:
    """The store learned from and the teacher behind the targets (online: the file's sha)."""
    recorded = prov.recorded_teacher_sha256(store.attrs) if store is not None else None
    deltas = None
    if isinstance(store, StoreUnion):
        deltas = [prov.store_lineage(m, np.arange(m.n)) for m in store.members[1:]]
        store = store.members[0]
        rows = rows[rows < store.n]
    return {
        "store": prov.store_lineage(store, rows) if store is not None else None,
        "delta_stores": deltas,
        "init": cfg.init or None,
        "teacher_sha256": teacher_sha or (recorded if cfg.distill else None),
        "online_teacher": cfg.online_teacher or None,
    }


def _check_modes(cfg: StudentTrainConfig) -> None:
    if cfg.distill and not cfg.online_teacher and not cfg.store:
        raise ConfigError(
            "distillation reads a target store: pass --store STORE (or "
            "--online-teacher teacher.pt, or --no-distill for the native student)"
        )
    if not cfg.data and not cfg.store:
        raise ConfigError("pass --data DIR (or a --store that bundles the inputs)")
    if cfg.online_teacher and not cfg.data:
        raise ConfigError(
            "--online-teacher needs --data DIR: the teacher sees full-resolution "
            "thermal images, which stores do not hold"
        )
    if cfg.distill and not (cfg.attention or cfg.semantic):
        raise ConfigError(
            "attention=false and semantic=false leave nothing to distil; use "
            "--no-distill for the task loss only"
        )


def _resolve_task(
    cfg: StudentTrainConfig, ds: PairedDataset | None, store: TargetStore | None
) -> Literal["detection", "segmentation"]:
    """The run's task ("detection" | "segmentation"): the config's, else the store's or the
    data's; refuses a store and data (or config) that disagree."""
    found = {
        "store": store.schema.task if store is not None else None,
        "dataset": ds.task if ds is not None else None,
    }
    if found["store"] and found["dataset"] and found["store"] != found["dataset"]:
        raise MdError(
            f"{cfg.data}: the dataset is for {found['dataset']}, the store "
            f"{cfg.store} for {found['store']}; pass the data the store was cached from"
        )
    task = cfg.task if cfg.task != "auto" else (found["store"] or found["dataset"])
    for what, t in found.items():
        if t is not None and t != task:
            where = cfg.store if what == "store" else cfg.data
            raise MdError(f"{where}: the {what} is for {t}, not {task}; pass --task {t}")
    assert task in ("detection", "segmentation")
    return cast(Literal["detection", "segmentation"], task)


def _online_teacher(
    cfg: StudentTrainConfig, task: str
) -> tuple[TwoStreamTeacher | None, str | None]:
    if not (cfg.online_teacher and cfg.distill):
        return None, None
    teacher, ckpt = load_model(cfg.online_teacher)
    if ckpt["model_kind"] != "teacher" or ckpt["task"] != task:
        raise MdError(
            f"{cfg.online_teacher}: holds a {ckpt['task']} {ckpt['model_kind']}, "
            f"not a {task} teacher; pass a checkpoint of md train-teacher --task {task}"
        )
    assert isinstance(teacher, TwoStreamTeacher)
    teacher.requires_grad_(False)
    return teacher, file_sha256(cfg.online_teacher)


def _levels_and_width(
    cfg: StudentTrainConfig, store: TargetStore | None, teacher: TwoStreamTeacher | None
) -> tuple[tuple[str, ...], float]:
    """Distilled levels (default: all the teacher's) and the trunk width (default: the
    teacher's, read off the store's channel counts or the teacher checkpoint)."""
    if not cfg.distill:
        return (), cfg.width or 1.0
    if teacher is not None:
        have = teacher.levels
        levels = check_levels(cfg.levels or have, allow_empty=False)
        if not set(levels) <= set(have):
            raise MdError(
                f"{cfg.online_teacher}: the teacher fuses levels {list(have)}, not "
                f"{list(levels)}; pass levels=[{','.join(have)}] or a subset"
            )
        teacher_width = teacher_width_of(teacher)
        if cfg.width and cfg.width != teacher_width:
            raise MdError(
                f"{cfg.online_teacher}: teacher width {teacher_width}, run width "
                f"{cfg.width}; distilled features need the teacher's (pass width=0)"
            )
        return levels, teacher_width
    assert store is not None
    have = tuple(lv.name.lower() for lv in store.schema.levels)
    levels = check_levels(cfg.levels or have, allow_empty=False)
    specs = prov.store_levels(store, levels)
    return levels, cfg.width or prov.width_from_store(store, specs, LEVEL_BASE_CHANNELS)


def teacher_width_of(teacher: TwoStreamTeacher) -> float:
    """The trunk width of a loaded two-stream teacher."""
    return float(teacher.visible.width)


def _rows(
    cfg: StudentTrainConfig,
    store: TargetStore | None,
    ds: PairedDataset | None,
    fingerprint: dict[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to sample (store indices, or dataset indices) and store row -> dataset index."""
    if store is None:
        assert ds is not None
        return np.arange(len(ds)), None
    rows = prov.written_rows(store, cfg.allow_partial)
    if ds is None:
        return rows, None
    assert fingerprint is not None
    ds_index = np.full(store.n, -1, dtype=np.int64)
    ds_index[rows] = prov.match_dataset(store, rows, ds, fingerprint)
    return rows, ds_index


def _source(
    cfg: StudentTrainConfig,
    store: TargetStore | None,
    ds: PairedDataset | None,
    rows: np.ndarray,
    ds_index: np.ndarray | None,
    teacher: TwoStreamTeacher | None,
) -> SampleSource:
    """What each sample carries; refuses flips without flipped views and bad crops."""
    offline = store is not None and cfg.distill and teacher is None
    inputs = store is not None and teacher is None and prov.bundled_inputs(store.schema)
    labels = store is not None and teacher is None and prov.bundled_labels(store.schema)
    tf = thermal_factor_of(cfg)
    if inputs:
        assert store is not None
        prov.check_thermal_factor(store, tf)
    if ds is None and not (inputs and labels):
        raise ConfigError(
            f"{cfg.store}: the store bundles no inputs and labels; pass --data DIR "
            "with the images it was cached from"
        )
    if offline and cfg.flip and store is not None and not store.schema.flips:
        raise StoreError(
            f"{cfg.store}: flip=true needs the stored flipped views "
            "(features_flip/attention_flip), which this store lacks; pass "
            "flip=false or cache the teacher with flips"
        )
    if inputs:
        assert store is not None
        image_hw = prov.bundled_image_hw(store.schema)
    else:
        assert ds is not None
        first = int(rows[0]) if ds_index is None else int(ds_index[rows[0]])
        height, width = ds[first]["visible"].shape[-2:]
        image_hw = (int(height), int(width))
    window = crop_hw(cfg)
    if window is not None:
        check_crop(0, 0, *window, ALIGN, *image_hw)
    specs = prov.store_levels(store, cfg.levels) if offline and store is not None else {}
    ids, groups = prov.row_meta(store, rows) if store is not None else (None, None)
    return SampleSource(
        task=cfg.task,
        image_hw=image_hw,
        thermal_factor=tf,
        store=store,
        dataset=None if (inputs and labels) else ds,
        ds_index=ds_index,
        target_levels={lv: s.name for lv, s in specs.items()} or None,
        strides={lv: s.stride for lv, s in specs.items()} or None,
        bundled_inputs=inputs,
        bundled_labels=labels,
        flip=cfg.flip,
        crop_hw=window,
        teacher_inputs=teacher is not None,
        ids=ids,
        groups=groups,
        device_inputs=cfg.device_inputs,
    )


def _store_fingerprint(store: TargetStore | None) -> dict[str, Any] | None:
    if store is None:
        return None
    recorded = prov.recorded_fingerprint(store.attrs)
    return recorded or {"sha256": prov.recorded_dataset_sha256(store.attrs)}
