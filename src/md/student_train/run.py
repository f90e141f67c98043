"""`md train-student`: the one-stream MD student, distilled from a teacher-target store.

run(cfg) reads straight down: resolve the run (store, data, online teacher) -> sample source
and streaming loader -> student -> loss -> `train_loop` -> loader-feed record.

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

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from md.config import AT_LEAST_1, NON_NEGATIVE, Limit, check_limits, config_to_dict, save_config
from md.data import PairedDataset, collate, dataset_fingerprint, open_dataset
from md.data.class_weights import enet_weights, label_frequencies
from md.data.transforms import check_crop
from md.errors import ConfigError, MdError, StoreError
from md.models import LEVEL_BASE_CHANNELS, build_model, load_model, model_args, num_classes
from md.models.checkpoint import file_sha256
from md.models.shared import check_levels
from md.stores import TargetStore, open_store
from md.student_train import provenance as prov
from md.student_train.loader import (
    ALIGN,
    DistillDataset,
    IterationSpan,
    SampleSource,
    ShardAwareSampler,
    cut_batch,
)
from md.student_train.losses import DistillationLoss
from md.train import distributed, loop, recipe
from md.train.loop import LoopSettings, LossFn, sidecar, train_loop
from md.train.teacher import TASK_ITERATIONS, resolve_class_weights


@dataclass(frozen=True)
class StudentTrainConfig(recipe.RunConfig):
    task: Literal["auto", "detection", "segmentation"] = "auto"  # auto: the store's / data's
    data: str = ""  # dataset root (KAIST or MFNet layout); optional if the store bundles inputs
    split: str = "train"  # reads DATA/<split>.txt
    store: str = ""  # teacher-target store (directory, .zip or fsspec URL)
    thermal_factor: Literal[1, 4, 16, 64, "none"] = 16  # pixel factor; none = visible only
    width: float = 0.0  # trunk width; 0 = the teacher's (from the store / online teacher), else 1
    levels: tuple[str, ...] = ()  # distilled levels; () = all of the store's / teacher's
    # (with distill=false the student has none: the plain image-level network)
    head_input: Literal["attended", "transfer", "trunk"] = "attended"  # see md.models.student
    head_channels: int = 128  # neck / PSP channels of the task head (as the teacher presets)
    assign: Literal["iou", "mutual_guidance"] = "iou"  # detection label assignment
    class_weighting: Literal["none", "enet"] = "none"  # segmentation CE weights (data/class_weights)
    class_weights: tuple[float, ...] = ()  # explicit per-class weights; filled in by "enet"
    pretrained: str = ""  # local torchvision resnet18 weight file (width 1 only)
    distill: bool = True  # false: task loss only (native image-level / visible-only student)
    online_teacher: str = ""  # teacher.pt: compute targets live instead of reading a store
    attention: bool = True  # attention transfer (the "A" of MD Tables 7-8)
    semantic: bool = True  # semantic transfer (the "S")
    semantic_loss: Literal["fmse", "mse"] = "fmse"  # S(F) or S(M)
    attention_weight: float = 1.0  # λ_A
    semantic_weight: float = 1.0  # λ_S (see the module docstring for the scale)
    focal_weights_grad: bool = False  # let gradients flow through the F-MSE softmax weights
    focal_softmax: Literal["sum", "mean"] = "sum"  # F-MSE weights: softmax of D (eq. 4) or D/C
    flip: bool = False  # random horizontal flips (p = 0.5); needs a store with flipped views
    crop: tuple[int, ...] = ()  # random crop [side] or [h, w], multiples of 32; () = off
    allow_partial: bool = False  # train on the written samples of an incomplete store
    window_shards: int = 4  # shards mixed by the shard-aware shuffle (read locality)
    # (num_workers: each DataLoader worker opens the store itself)
    prefetch_factor: int = recipe.run_control(2)  # batches each worker prepares ahead
    pin_memory: bool = recipe.run_control(True)  # page-locked batches, non_blocking copies (CUDA)
    # Multi-process (torchrun) training; batch_size above is the global batch.
    shard_groups: int = 0  # G disjoint shard groups per batch (a multiple of W); 0 = W processes
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch, not per process
    dist_timeout_s: int = recipe.run_control(600)  # a rank waiting longer on the others fails

    LIMITS: ClassVar[dict[str, Limit]] = {
        **recipe.MODEL_LIMITS, "attention_weight": NON_NEGATIVE, "semantic_weight": NON_NEGATIVE,
        "crop": Limit(32), "window_shards": AT_LEAST_1, "prefetch_factor": AT_LEAST_1,
        "shard_groups": NON_NEGATIVE, "dist_timeout_s": AT_LEAST_1,
    }  # fmt: skip


# The teacher's sizes (`recipe.SIZE_PRESETS`), so a student fits its teacher's stores.
PRESETS = recipe.presets({"gpu-full": {"prefetch_factor": 4}})


def thermal_factor_of(cfg: StudentTrainConfig) -> int | None:
    """1/4/16/64, or None for the visible-only student."""
    return None if cfg.thermal_factor == "none" else int(cfg.thermal_factor)


def crop_hw(cfg: StudentTrainConfig) -> tuple[int, int] | None:
    sizes = [int(v) for v in cfg.crop]
    if not sizes or sizes == [0]:
        return None
    if len(sizes) > 2 or min(sizes) <= 0:
        raise ConfigError(f"crop must be [side] or [h, w] (positive), got {list(cfg.crop)}")
    return (sizes[0], sizes[-1])


# --- resolving the run -------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything `run` (and the loader benchmark) needs, resolved and checked."""

    cfg: StudentTrainConfig  # task, width and levels filled in
    source: SampleSource
    sampler: ShardAwareSampler
    model: nn.Module
    loss_fn: LossFn
    teacher: nn.Module | None
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
    store = open_store(cfg.store) if cfg.store else None
    task = _resolve_task(cfg, ds, store)
    teacher, teacher_sha = _online_teacher(cfg, task)
    cfg = replace(cfg, task=task)
    cfg = _class_weights(cfg, ds, store)
    levels, width = _levels_and_width(cfg, store, teacher)
    cfg = replace(cfg, levels=levels, width=width)
    rows, ds_index = _rows(cfg, store, ds, fingerprint)
    source = _source(cfg, store, ds, rows, ds_index, teacher)
    model = _build_student(cfg)
    if source.target_levels is not None:  # offline: the store's maps must fit this student
        assert store is not None
        prov.check_store_shapes(store, prov.store_levels(store, levels),
                                model.out_channels, model.strides,  # type: ignore[arg-type]
                                source.image_hw)
    meta = {"task": task, "model_kind": "student", "model_args": student_args(cfg),
            "config": config_to_dict(cfg), "split": cfg.split,
            "lineage": _lineage(cfg, store, rows, teacher_sha),
            "dataset_fingerprint": fingerprint or _store_fingerprint(store),
            "world_size": world_size}
    return Setup(cfg, source, _sampler(cfg, store, rows, len(ds) if ds is not None else 0),
                 model, _loss_fn(cfg, model, teacher), teacher, meta,
                 cfg.iterations or TASK_ITERATIONS[task], rank, world_size)


def check_world(cfg: StudentTrainConfig, world_size: int) -> StudentTrainConfig:
    """Refuse a global batch or shard-group count that does not split over the processes;
    fill in ``shard_groups`` (0 -> the number of processes)."""
    groups = cfg.shard_groups or world_size
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch and must divide by "
                          f"the {world_size} processes; pass a multiple of {world_size} (each "
                          f"process takes batch_size / {world_size})")
    if groups < 1 or groups % world_size:
        raise ConfigError(f"shard_groups={cfg.shard_groups} must be a multiple of the "
                          f"{world_size} processes (0 = one group per process)")
    if cfg.batch_size % groups:
        raise ConfigError(f"batch_size={cfg.batch_size} does not split into shard_groups="
                          f"{groups}; pass a batch_size that is a multiple of {groups}")
    return replace(cfg, shard_groups=groups)


def _class_weights(cfg: StudentTrainConfig, ds: PairedDataset | None,
                   store: TargetStore | None) -> StudentTrainConfig:
    """ENet class weights from the training labels: the dataset's files, else the store's."""
    if cfg.task != "segmentation" or cfg.class_weighting == "none" or cfg.class_weights:
        return cfg
    if ds is not None:
        return resolve_class_weights(cfg, ds)
    if store is not None and "labels" in store.raw_names():
        rows = np.flatnonzero(store.written_mask())
        labels = (store.read(rows[i:i + 64], ["labels"])["labels"]
                  for i in range(0, len(rows), 64))
        frequencies = label_frequencies(labels, num_classes(cfg.task))
        return replace(cfg, class_weights=enet_weights(frequencies))
    raise MdError("class_weighting=enet needs training labels: pass --data, a store made with "
                  "--bundle-inputs, or class_weighting=none")


def _sampler(cfg: StudentTrainConfig, store: TargetStore | None, rows: np.ndarray,
             ds_len: int) -> ShardAwareSampler:
    """Over store rows (shard-aware), or over dataset indices (shards of one sample)."""
    n, shard_size = (store.n, store.shard_size) if store is not None else (ds_len, 1)
    shards = np.unique(rows // shard_size).size
    if shards < cfg.shard_groups:
        where = cfg.store if store is not None else cfg.data
        raise ConfigError(f"{where}: {shards} shards for shard_groups={cfg.shard_groups}; each "
                          "group (each process) reads whole shards of its own: cache the store "
                          "with a smaller --shard-size, or use fewer groups / processes")
    mask = np.zeros(n, dtype=np.bool_)
    mask[rows] = True
    return ShardAwareSampler(n, shard_size, mask, cfg.batch_size, cfg.seed, cfg.window_shards,
                             groups=cfg.shard_groups)


def _lineage(cfg: StudentTrainConfig, store: TargetStore | None, rows: np.ndarray,
             teacher_sha: str | None) -> dict[str, Any]:
    """The store learned from and the teacher behind the targets (online: the file's sha)."""
    recorded = prov.recorded_teacher_sha256(store.attrs) if store is not None else None
    return {"store": prov.store_lineage(store, rows) if store is not None else None,
            "teacher_sha256": teacher_sha or (recorded if cfg.distill else None),
            "online_teacher": cfg.online_teacher or None}


def _check_modes(cfg: StudentTrainConfig) -> None:
    if cfg.distill and not cfg.online_teacher and not cfg.store:
        raise ConfigError("distillation reads a target store: pass --store STORE (or "
                          "--online-teacher teacher.pt, or --no-distill for the native student)")
    if not cfg.data and not cfg.store:
        raise ConfigError("pass --data DIR (or a --store that bundles the inputs)")
    if cfg.online_teacher and not cfg.data:
        raise ConfigError("--online-teacher needs --data DIR: the teacher sees full-resolution "
                          "thermal images, which stores do not hold")
    if cfg.distill and not (cfg.attention or cfg.semantic):
        raise ConfigError("attention=false and semantic=false leave nothing to distil; use "
                          "--no-distill for the task loss only")


def _resolve_task(cfg: StudentTrainConfig, ds: PairedDataset | None,
                  store: TargetStore | None) -> Literal["detection", "segmentation"]:
    found = {"store": store.schema.task if store is not None else None,
             "dataset": ds.task if ds is not None else None}
    if found["store"] and found["dataset"] and found["store"] != found["dataset"]:
        raise MdError(f"{cfg.data}: the dataset is for {found['dataset']}, the store "
                      f"{cfg.store} for {found['store']}; pass the data the store was cached from")
    task = cfg.task if cfg.task != "auto" else (found["store"] or found["dataset"])
    for what, t in found.items():
        if t is not None and t != task:
            where = cfg.store if what == "store" else cfg.data
            raise MdError(f"{where}: the {what} is for {t}, not {task}; pass --task {t}")
    assert task in ("detection", "segmentation")
    return task  # type: ignore[return-value]


def _online_teacher(cfg: StudentTrainConfig, task: str) -> tuple[nn.Module | None, str | None]:
    if not (cfg.online_teacher and cfg.distill):
        return None, None
    teacher, ckpt = load_model(cfg.online_teacher)
    if ckpt["model_kind"] != "teacher" or ckpt["task"] != task:
        raise MdError(f"{cfg.online_teacher}: holds a {ckpt['task']} {ckpt['model_kind']}, "
                      f"not a {task} teacher; pass a checkpoint of md train-teacher --task {task}")
    teacher.requires_grad_(False)
    return teacher, file_sha256(cfg.online_teacher)


def _levels_and_width(cfg: StudentTrainConfig, store: TargetStore | None,
                      teacher: nn.Module | None) -> tuple[tuple[str, ...], float]:
    """Distilled levels (default: all the teacher's) and the trunk width (default: the
    teacher's, read off the store's channel counts or the teacher checkpoint)."""
    if not cfg.distill:
        return (), cfg.width or 1.0
    if teacher is not None:
        have: tuple[str, ...] = tuple(teacher.levels)  # type: ignore[arg-type]
        levels = check_levels(cfg.levels or have, allow_empty=False)
        if not set(levels) <= set(have):
            raise MdError(f"{cfg.online_teacher}: the teacher fuses levels {list(have)}, not "
                          f"{list(levels)}; pass levels=[{','.join(have)}] or a subset")
        teacher_width = teacher_width_of(teacher)
        if cfg.width and cfg.width != teacher_width:
            raise MdError(f"{cfg.online_teacher}: teacher width {teacher_width}, run width "
                          f"{cfg.width}; distilled features need the teacher's (pass width=0)")
        return levels, teacher_width
    assert store is not None
    have = tuple(lv.name.lower() for lv in store.schema.levels)
    levels = check_levels(cfg.levels or have, allow_empty=False)
    specs = prov.store_levels(store, levels)
    return levels, cfg.width or prov.width_from_store(store, specs, LEVEL_BASE_CHANNELS)


def teacher_width_of(teacher: nn.Module) -> float:
    """The trunk width of a loaded two-stream teacher."""
    return float(teacher.visible.width)  # type: ignore[union-attr,arg-type]


def _rows(cfg: StudentTrainConfig, store: TargetStore | None, ds: PairedDataset | None,
          fingerprint: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray | None]:
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


def _source(cfg: StudentTrainConfig, store: TargetStore | None, ds: PairedDataset | None,
            rows: np.ndarray, ds_index: np.ndarray | None,
            teacher: nn.Module | None) -> SampleSource:
    """What each sample carries; refuses flips without flipped views and bad crops."""
    offline = store is not None and cfg.distill and teacher is None
    inputs = store is not None and teacher is None and prov.bundled_inputs(store.schema)
    labels = store is not None and teacher is None and prov.bundled_labels(store.schema)
    tf = thermal_factor_of(cfg)
    if inputs:
        prov.check_thermal_factor(store, tf)  # type: ignore[arg-type]
    if ds is None and not (inputs and labels):
        raise ConfigError(f"{cfg.store}: the store bundles no inputs and labels; pass --data DIR "
                          "with the images it was cached from")
    if offline and cfg.flip and not store.schema.flips:  # type: ignore[union-attr]
        raise StoreError(f"{cfg.store}: flip=true needs the stored flipped views "
                         "(features_flip/attention_flip), which this store lacks; pass "
                         "flip=false or cache the teacher with flips")
    if inputs:
        image_hw = prov.bundled_image_hw(store.schema)  # type: ignore[union-attr]
    else:
        assert ds is not None
        first = int(rows[0]) if ds_index is None else int(ds_index[rows[0]])
        height, width = ds[first]["visible"].shape[-2:]
        image_hw = (int(height), int(width))
    window = crop_hw(cfg)
    if window is not None:
        check_crop(0, 0, *window, ALIGN, *image_hw)
    specs = prov.store_levels(store, cfg.levels) if offline else {}  # type: ignore[arg-type]
    ids, groups = prov.row_meta(store, rows) if store is not None else (None, None)
    return SampleSource(
        task=cfg.task, image_hw=image_hw, thermal_factor=tf, store=store,
        dataset=None if (inputs and labels) else ds, ds_index=ds_index,
        target_levels={lv: s.name for lv, s in specs.items()} or None,
        strides={lv: s.stride for lv, s in specs.items()} or None,
        bundled_inputs=inputs, bundled_labels=labels, flip=cfg.flip, crop_hw=window,
        teacher_inputs=teacher is not None, ids=ids, groups=groups)


def _store_fingerprint(store: TargetStore | None) -> dict[str, Any] | None:
    if store is None:
        return None
    recorded = prov.recorded_fingerprint(store.attrs)
    return recorded or {"sha256": prov.recorded_dataset_sha256(store.attrs)}


# --- model and loss ------------------------------------------------------------------------------


def student_args(cfg: StudentTrainConfig) -> dict[str, Any]:
    """Constructor arguments saved in the checkpoint so `md evaluate model` can rebuild it."""
    return model_args("student", cfg.task, width=cfg.width, head_channels=cfg.head_channels,
                      levels=cfg.levels, assign=cfg.assign, class_weights=cfg.class_weights,
                      in_channels=3 if thermal_factor_of(cfg) is None else 6,
                      head_input=cfg.head_input)


def _build_student(cfg: StudentTrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed only
    return build_model("student", cfg.task, pretrained=cfg.pretrained or None, **student_args(cfg))


def _loss_fn(cfg: StudentTrainConfig, model: nn.Module, teacher: nn.Module | None) -> LossFn:
    """Task parts (e.g. cls, box / seg), then "task", "attention", "semantic", "total"."""
    distill = None
    if cfg.distill:
        distill = DistillationLoss(
            cfg.levels, attention=cfg.attention, semantic=cfg.semantic,
            semantic_loss=cfg.semantic_loss, attention_weight=cfg.attention_weight,
            semantic_weight=cfg.semantic_weight, focal_weights_grad=cfg.focal_weights_grad,
            focal_softmax=cfg.focal_softmax)
    strides = dict(model.strides)  # type: ignore[arg-type]

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = m(batch["x"])  # through the DDP wrapper, if any (its gradient hooks)
        parts = distributed.unwrap(m).loss(out, batch)  # type: ignore[operator]
        task = parts.pop("total")
        if distill is None:
            return {**parts, "total": task}
        targets = (live_targets(teacher, batch, strides) if teacher is not None
                   else stored_targets(batch, cfg.levels))
        d = distill(out, targets)
        return {**parts, "task": task, **{k: v for k, v in d.items() if k != "distill"},
                "total": task + d["distill"]}

    return loss_fn


def stored_targets(batch: dict[str, Any], levels: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The batch's store targets as {"features": {L: (B, C, h, w)}, "masks": {L: (B, 1, h, w)}}."""
    return {"features": {lv: batch[f"target/features/{lv}"] for lv in levels},
            "masks": {lv: batch[f"target/attention/{lv}"] for lv in levels}}


def live_targets(teacher: nn.Module, batch: dict[str, Any],
                 strides: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Targets from the teacher on the full (flipped) frame, cut to each sample's crop window:
    exactly what the store would hold for the same sample and augmentation."""
    with torch.no_grad():
        out = teacher.forward_features(batch["teacher/visible"],  # type: ignore[operator]
                                       batch["teacher/thermal"])
    windows = batch["crop_window"].cpu()
    full = torch.tensor([0, 0, *batch["teacher/visible"].shape[-2:]])
    if bool((windows == full).all()):  # no crop: the whole maps, as the store holds them
        return {key: {lv: out[key][lv].float() for lv in strides} for key in ("features", "masks")}
    return {key: {lv: cut_batch(out[key][lv].float(), windows, s) for lv, s in strides.items()}
            for key in ("features", "masks")}


# --- loader --------------------------------------------------------------------------------------


class FeedMeter:
    """Times how long the training loop waits for each batch (loader feed vs step time)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batches, self.wait, self.first_wait = 0, 0.0, 0.0

    def wrap(self, batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        it = iter(batches)
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

    def record(self, seconds: float) -> dict[str, Any]:
        """Steady-state figures (the first batch excluded): samples/s the step consumed and
        the fraction of the loop spent waiting on the loader (≈ 0 when it keeps up)."""
        n = max(0, self.batches - 1) * self.batch_size
        busy = max(1e-9, seconds - self.first_wait)
        return {"batches": self.batches, "first_batch_s": round(self.first_wait, 4),
                "wait_s": round(self.wait, 4), "wait_fraction": round(self.wait / busy, 4),
                "train_samples_per_s": round(n / busy, 2),
                "step_samples_per_s": round(n / max(1e-9, busy - self.wait), 2)}


def make_loader(setup: Setup, start: int, stop: int, device: torch.device,
                num_workers: int | None = None) -> DataLoader:
    """The DataLoader for iterations start .. stop-1 (workers open the store lazily); under
    DDP this rank's part of each batch, with its own workers."""
    cfg = setup.cfg
    workers = cfg.num_workers if num_workers is None else num_workers
    return DataLoader(DistillDataset(setup.source),
                      batch_sampler=IterationSpan(setup.sampler, start, stop, setup.rank,
                                                  setup.world_size),
                      collate_fn=collate, num_workers=workers,
                      prefetch_factor=cfg.prefetch_factor if workers else None,
                      pin_memory=cfg.pin_memory and device.type == "cuda",
                      persistent_workers=False)


# --- run -----------------------------------------------------------------------------------------


def loop_settings(cfg: StudentTrainConfig, iterations: int) -> LoopSettings:
    return loop.loop_settings(cfg, iterations, sync_batchnorm=cfg.sync_batchnorm,
                              find_unused_parameters=_may_leave_parameters_unused(cfg))


def _may_leave_parameters_unused(cfg: StudentTrainConfig) -> bool:
    """Whether a step can leave transfer modules without gradient: their outputs reach the
    task head only when ``head_input=attended``; else only the enabled transfer losses use
    them (DDP then has to look for unused parameters every step)."""
    return cfg.head_input != "attended" and bool(cfg.levels)


def run(cfg: StudentTrainConfig, *, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train a student; writes OUT, OUT-stem.{metrics.jsonl,loss.png,config.yaml}.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes the files."""
    check_limits(cfg)
    out = Path(out)
    env = distributed.env_from()
    check_world(cfg, env.world_size)  # before any process waits on the others
    device = distributed.device_for(env, cfg.device)
    with distributed.process_group(env, device, cfg.dist_timeout_s):
        return _train(cfg, out, resume, env, device)


def _train(cfg: StudentTrainConfig, out: Path, resume: bool, env: distributed.DistEnv,
           device: torch.device) -> dict[str, Any]:
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
        return meter.wrap(make_loader(setup, start, setup.iterations, device))

    mode = ("native" if not setup.cfg.distill else
            "online" if setup.teacher is not None else "offline")
    summary = train_loop(setup.model, setup.loss_fn, batches,
                         loop_settings(setup.cfg, setup.iterations), out=out, meta=setup.meta,
                         device=device, resume=resume, desc=f"student[{mode}/{setup.cfg.task}]",
                         dist=env)
    feed = meter.record(summary["seconds"])  # rank 0's wait; samples/s of the whole job
    if env.is_main:
        with sidecar(out, "metrics.jsonl").open("a") as f:  # not a loss record: the plot skips it
            f.write(json.dumps({"kind": "loader", "iteration": summary["iteration"],
                                "world_size": env.world_size, **feed}) + "\n")
    return {**summary, "out": str(out), "device": str(device), "mode": mode, "loader": feed,
            "lineage": setup.meta["lineage"], "rank": env.rank, "world_size": env.world_size}
