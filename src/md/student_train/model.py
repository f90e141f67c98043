"""The student of a `md train-student` run and its loss: task loss + λ_A · attention transfer
+ λ_S · semantic transfer on targets from the store (`stored_targets`) or from a live teacher
(`live_targets`); see `md.student_train.run` for the weights and their scale."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from md.models import OneStreamStudent, TwoStreamTeacher, build_model, model_args
from md.stores import device as device_decode
from md.stores.codecs import CodecPreset, get_preset
from md.student_train.config import StudentTrainConfig, thermal_factor_of
from md.student_train.loader import build_input, cut_batch
from md.student_train.losses import DistillationLoss
from md.student_train.transfer_stats import transfer_stats
from md.train import distributed
from md.train.group_weights import GroupWeights
from md.train.loop import LossFn, log_step


class DistillableStudent(Protocol):
    """What distillation needs of a student (`md.models.OneStreamStudent` is one): its
    distilled levels with their channels and strides, to match the teacher's maps; a forward
    to {"features": {L: ...}, "masks": {L: ...}, "pred": ...}; the task loss parts."""

    levels: tuple[str, ...]
    out_channels: dict[str, int]
    strides: dict[str, int]

    def __call__(self, x: Tensor) -> dict[str, Any]: ...

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, Tensor]: ...


def student_args(cfg: StudentTrainConfig) -> dict[str, Any]:
    """Constructor arguments saved in the checkpoint so `md evaluate model` can rebuild it."""
    return model_args(
        "student",
        cfg.task,
        width=cfg.width,
        head_channels=cfg.head_channels,
        levels=cfg.levels,
        assign=cfg.assign,
        class_weights=cfg.class_weights,
        in_channels=3 if thermal_factor_of(cfg) is None else 6,
        head_input=cfg.head_input,
    )


def build_student(cfg: StudentTrainConfig) -> OneStreamStudent:
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed only
    model = build_model("student", cfg.task, pretrained=cfg.pretrained or None, **student_args(cfg))
    assert isinstance(model, OneStreamStudent)
    return model


def student_loss_fn(
    cfg: StudentTrainConfig,
    model: DistillableStudent,
    teacher: TwoStreamTeacher | None,
    codec: CodecPreset | None = None,
    group_weights: GroupWeights | None = None,
) -> LossFn:
    """Task parts (e.g. cls, box / seg), then "task", "attention", "semantic", "total".
    `codec`: the store's preset, to decode the stored targets on the step's device."""
    distill = None
    if cfg.distill:
        distill = DistillationLoss(
            cfg.levels,
            attention=cfg.attention,
            semantic=cfg.semantic,
            semantic_loss=cfg.semantic_loss,
            attention_weight=cfg.attention_weight,
            semantic_weight=cfg.semantic_weight,
            focal_weights_grad=cfg.focal_weights_grad,
            focal_softmax=cfg.focal_softmax,
        )
    strides = dict(model.strides)

    def loss_fn(m: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = build_input(batch)  # bundled uint8 inputs -> x, here on the step's device
        weight = None
        if group_weights is not None:
            weight = group_weights.batch_weights(batch, batch["x"].device)
            batch = {**batch, "sample_weight": weight}
        student = cast(DistillableStudent, distributed.unwrap(m))  # `model`, unwrapped
        stats = distill is not None and cfg.transfer_stats and log_step()
        head_inputs: dict[str, Tensor] = {}
        hook = _capture_head_input(student, head_inputs) if stats else None
        try:
            out = m(batch["x"])  # through the DDP wrapper, if any (its gradient hooks)
        finally:
            if hook is not None:
                hook.remove()
        parts = student.loss(out, batch)
        task = parts.pop("total")
        if distill is None:
            return {**parts, "total": task}
        targets = (
            live_targets(teacher, batch, strides)
            if teacher is not None
            else stored_targets(batch, cfg.levels, codec)
        )
        d = distill(out, targets) if weight is None else distill(out, targets, weight)
        diagnostics = (
            transfer_stats(
                out,
                targets,
                head_inputs,
                d,
                task,
                levels=tuple(cfg.levels),
                attention_weight=cfg.attention_weight,
                semantic_weight=cfg.semantic_weight,
                focal_softmax=cfg.focal_softmax,
                sample_weight=weight,
            )
            if stats
            else {}
        )
        return {
            **parts,
            "task": task,
            **{k: v for k, v in d.items() if k != "distill"},
            "total": task + d["distill"],
            **diagnostics,
        }

    return loss_fn


def _capture_head_input(student: Any, into: dict[str, Tensor]) -> Any:
    """A forward pre-hook on the student's task head that records its input per level
    (the features the head reads; `transfer_stats`); returns the handle, None without a
    head. The hook returns None: the forward is unchanged."""
    head = getattr(student, "head", None)
    if not isinstance(head, nn.Module):
        return None

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Mapping):
            into.update({k: v for k, v in args[0].items() if isinstance(v, Tensor)})

    return head.register_forward_pre_hook(hook)


def stored_targets(
    batch: dict[str, Any], levels: Iterable[str], codec: CodecPreset | None = None
) -> dict[str, dict[str, Any]]:
    """The batch's store targets as {"features": {L: (B, C, h, w)}, "masks": {L: (B, 1, h, w)}},
    float32: decoded here, on the batch's device, from what the loader shipped as stored
    (`codec`: the store's preset; float targets pass through). Bitwise what
    `TargetStore.read` would have given (`md.stores.device`)."""
    first = batch[f"target/features/{next(iter(levels))}"] if levels else None
    if codec is None and first is not None and not first.is_floating_point():
        raise ValueError("stored_targets: stored (encoded) targets need the store's codec")
    preset = codec or get_preset("lossless")  # float targets only: passed through
    return {
        "features": {
            lv: device_decode.decode_features(
                batch[f"target/features/{lv}"], batch.get(f"target/feature_scale/{lv}"), preset
            )
            for lv in levels
        },
        "masks": {
            lv: device_decode.decode_attention(batch[f"target/attention/{lv}"]) for lv in levels
        },
    }


def live_targets(
    teacher: TwoStreamTeacher, batch: dict[str, Any], strides: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Targets from the teacher on the full (flipped) frame, cut to each sample's crop window:
    exactly what the store would hold for the same sample and augmentation."""
    with torch.no_grad():
        out = teacher.forward_features(batch["teacher/visible"], batch["teacher/thermal"])
    windows = batch["crop_window"].cpu()
    full = torch.tensor([0, 0, *batch["teacher/visible"].shape[-2:]])
    if bool((windows == full).all()):  # no crop: the whole maps, as the store holds them
        return {key: {lv: out[key][lv].float() for lv in strides} for key in ("features", "masks")}
    return {
        key: {lv: cut_batch(out[key][lv].float(), windows, s) for lv, s in strides.items()}
        for key in ("features", "masks")
    }
