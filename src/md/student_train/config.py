"""`md train-student`'s config: the frozen dataclass, its presets and the small readings of it
(thermal factor, crop window) the other modules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from md.config import AT_LEAST_1, NON_NEGATIVE, Limit
from md.errors import ConfigError
from md.train import recipe


@dataclass(frozen=True)
class StudentTrainConfig(recipe.RunConfig):
    task: Literal["auto", "detection", "segmentation"] = "auto"  # auto: the store's / data's
    data: str = ""  # dataset root (KAIST or MFNet layout); optional if the store bundles inputs
    split: str = "train"  # reads DATA/<split>.txt
    store: str = ""  # teacher-target store (directory, .zip or fsspec URL)
    # More stores of the same schema (delta stores of md cache-teacher --ids) trained on
    # together with `store` (md.student_train.union); they need bundled inputs.
    delta_stores: tuple[str, ...] = ()
    delta_repeat: int = 1  # each delta frame is sampled this many times as often as a base one
    init: str = ""  # student checkpoint whose weights start the run (fine-tuning)
    thermal_factor: Literal[1, 4, 16, 64, "none"] = 16  # pixel factor; none = visible only
    width: float = 0.0  # trunk width; 0 = the teacher's (from the store / online teacher), else 1
    levels: tuple[str, ...] = ()  # distilled levels; () = all of the store's / teacher's
    # (with distill=false the student has none: the plain image-level network)
    head_input: Literal["attended", "transfer", "trunk"] = "attended"  # see md.models.student
    head_channels: int = 128  # neck / PSP channels of the task head (as the teacher presets)
    assign: Literal["iou", "mutual_guidance"] = "iou"  # detection label assignment
    class_weighting: Literal["none", "enet"] = (
        "none"  # segmentation CE weights (data/class_weights)
    )
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
    group_weights: str = "none"  # none | inverse_frequency | FILE (md.train.group_weights)
    group_field: str = "appearance"  # day_night or a field of DATA/groups.json
    window_shards: int = 4  # shards mixed by the shard-aware shuffle (read locality)
    # (num_workers: each DataLoader worker opens the store itself)
    prefetch_factor: int = recipe.run_control(2)  # batches each worker prepares ahead
    pin_memory: bool = recipe.run_control(True)  # page-locked batches, non_blocking copies (CUDA)
    # With num_workers=0: batches read ahead on a thread while the step runs (0 = off)
    prefetch_batches: int = recipe.run_control(2)
    # Images from --data decoded once into this directory (keyed by the dataset's
    # fingerprint) and read back from there in later epochs and runs; "" = decode each time
    image_cache: str = recipe.run_control("")
    # Bundled inputs: ship the uint8 images and build the student input on the step's device
    device_inputs: bool = recipe.run_control(True)
    # Multi-process (torchrun) training; batch_size above is the global batch.
    shard_groups: int = 0  # G disjoint shard groups per batch (a multiple of W); 0 = W processes
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch, not per process
    dist_timeout_s: int = recipe.run_control(600)  # a rank waiting longer on the others fails
    # Per-level feature norms and transfer-loss values in the metrics log, on logged steps
    # only, under no_grad (md.student_train.transfer_stats); never changes the weights
    transfer_stats: bool = recipe.run_control(True)

    LIMITS: ClassVar[dict[str, Limit]] = {
        **recipe.MODEL_LIMITS, "attention_weight": NON_NEGATIVE, "semantic_weight": NON_NEGATIVE,
        "crop": Limit(32), "window_shards": AT_LEAST_1, "delta_repeat": AT_LEAST_1, "prefetch_factor": AT_LEAST_1,
        "prefetch_batches": NON_NEGATIVE, "shard_groups": NON_NEGATIVE, "dist_timeout_s": AT_LEAST_1,
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
