"""`md train-teacher`: the two-stream GAFF teacher (or the decision-level baseline).

run(cfg) reads straight down: data -> model -> loop settings -> train_loop -> checkpoint.
Defaults follow MD §4.2 (batch 16, SGD lr 1e-2, 500 warm-up iterations from 1e-6, cosine;
3,500 iterations for detection, 14,000 for segmentation; GAFF losses added to the task loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch.utils.data import DataLoader

from md.config import POSITIVE, Limit, check_limits, config_to_dict, save_config
from md.data import dataset_fingerprint, open_dataset
from md.data.collate import collate
from md.data.transforms import hflip_sample
from md.errors import ConfigError, MdError
from md.models import build_model, model_args
from md.train import group_weights, recipe
from md.train.loop import LoopResult, loop_settings, sidecar, train_loop
from md.train.sampling import IterationBatchSampler, SeededAugment


@dataclass(frozen=True)
class TeacherTrainConfig(recipe.RunConfig):
    task: Literal["detection", "segmentation"] = "detection"
    data: str = ""  # dataset root (KAIST or MFNet layout)
    split: str = "train"  # reads DATA/<split>.txt
    fusion: Literal["gaff", "decision"] = "gaff"  # feature-level (GAFF) or decision-level
    width: float = 1.0  # ResNet-18 width multiplier (1.0 = the paper's network)
    levels: tuple[str, ...] = ("c3", "c4", "c5")  # GAFF-fused levels
    pretrained: str = ""  # local torchvision resnet18 weight file (width 1 only)
    assign: Literal["iou", "mutual_guidance"] = "iou"  # detection label assignment
    head_channels: int = 128  # neck / PSP channels of the task head (smaller on CPU presets)
    class_weighting: Literal["none", "enet"] = (
        "none"  # segmentation CE weights (data/class_weights)
    )
    class_weights: tuple[float, ...] = ()  # explicit per-class weights; filled in by "enet"
    hflip: bool = True  # random horizontal flips (p = 0.5)
    # Segmentation GAFF mask target per feature cell (md.models.gaff.foreground_from_labels):
    # "fraction" of non-background pixels, or "any" = 1 where the cell holds any (binary).
    seg_foreground: Literal["fraction", "any"] = "fraction"
    group_weights: str = "none"  # none | inverse_frequency | FILE (md.train.group_weights)
    group_field: str = "appearance"  # day_night or a field of DATA/groups.json

    LIMITS: ClassVar[dict[str, Limit]] = {**recipe.MODEL_LIMITS, "width": POSITIVE}


PRESETS = recipe.presets()  # cpu-tiny, cpu-demo, gpu-full (`recipe.SIZE_PRESETS`)


def _augment(cfg: TeacherTrainConfig) -> Any:
    if not cfg.hflip:
        return None

    def aug(item: dict, g: torch.Generator) -> dict:
        return hflip_sample(item) if torch.rand((), generator=g) < 0.5 else item

    return aug


@dataclass(frozen=True)
class TeacherRun:
    """What `run` did: the loop's result, the checkpoint it wrote, the device it used."""

    loop: LoopResult
    out: str
    device: str

    def summary(self) -> dict[str, Any]:
        """The ``--json`` record: the loop's fields, then ``out`` and ``device``."""
        return {**dataclasses.asdict(self.loop), "out": self.out, "device": self.device}


def run(cfg: TeacherTrainConfig, *, out: str | Path, resume: bool = False) -> TeacherRun:
    """Train a teacher; writes OUT, OUT-stem.{metrics.jsonl,loss.png,config.yaml}."""
    check_limits(cfg)
    device = recipe.resolve_device(cfg.device)  # before any output: a missing CUDA is one line
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(cfg.data, split=cfg.split)
    if ds.task != cfg.task:
        raise MdError(
            f"{cfg.data}: a {ds.layout} dataset is for {ds.task}, not {cfg.task}; "
            f"pass --task {ds.task}"
        )
    cfg = recipe.resolve_class_weights(cfg, ds)
    iterations = cfg.iterations or recipe.TASK_ITERATIONS[cfg.task]
    kind = "teacher" if cfg.fusion == "gaff" else "decision"
    margs = model_args(
        kind,
        cfg.task,
        width=cfg.width,
        head_channels=cfg.head_channels,
        levels=cfg.levels,
        assign=cfg.assign,
        class_weights=cfg.class_weights,
    )
    if cfg.seg_foreground != "fraction":  # absent by default: older checkpoints stay the same
        if kind != "teacher" or cfg.task != "segmentation":
            raise ConfigError(
                f"seg_foreground={cfg.seg_foreground} is for GAFF segmentation teachers; "
                "drop it for this run"
            )
        margs["seg_foreground"] = cfg.seg_foreground
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed only
    model = build_model(kind, cfg.task, pretrained=cfg.pretrained or None, **margs)
    save_config(cfg, sidecar(out, "config.yaml"))
    meta = {
        "task": cfg.task,
        "model_kind": kind,
        "model_args": margs,
        "config": config_to_dict(cfg),
        "dataset_fingerprint": dataset_fingerprint(ds),
        "split": cfg.split,
    }
    weights = group_weights.resolve(
        cfg.group_weights,
        cfg.group_field,
        cfg.data,
        [s.id for s in ds.samples],
        [s.group for s in ds.samples],
    )
    meta["lineage"] = {"group_weights": None if weights is None else weights.lineage()}
    sampler_args = (len(ds), cfg.batch_size, iterations, cfg.seed)

    def batches(start: int) -> DataLoader:
        sampler = IterationBatchSampler(*sampler_args, start=start)
        return DataLoader(
            SeededAugment(ds, _augment(cfg)),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def loss_fn(m: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if weights is not None:  # task loss per sample (the GAFF mask losses unweighted)
            w = weights.batch_weights(batch, batch["visible"].device)
            batch = {**batch, "sample_weight": w}
        return m.loss(m(batch["visible"], batch["thermal"]), batch)

    settings = loop_settings(cfg, iterations)
    result = train_loop(
        model,
        loss_fn,
        batches,
        settings,
        out=out,
        meta=meta,
        device=device,
        resume=resume,
        desc=f"teacher[{kind}/{cfg.task}]",
    )
    return TeacherRun(result, str(out), str(device))
