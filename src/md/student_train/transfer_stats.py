"""What the transfer does to the features: per-level diagnostics for the training log.

On the steps the loop logs (`md.train.loop.log_step`) the student's loss function adds,
under ``no_grad`` and from tensors the step has already computed, the fields below to the
metrics record (``stats/...``, beside the ``loss/...`` fields). Nothing here enters the
backward and nothing is computed on the other steps, so the weights of a run do not depend
on them (``transfer_stats=false`` turns them off; tests check both runs are bitwise equal).

Norms of a feature map ``t`` (B, C, H, W):

- ``rms``: ``sqrt(mean(t²))`` over B, C, H, W (the per-element scale; eq. 4 and MSE are in
  its square's units);
- ``l2``: the mean over B, H, W of the per-position channel vector's L2 norm
  ``sqrt(Σ_c t²)`` (the scale D of eq. 4 sums over).

Per distilled level L (``stats/L/...``): ``teacher_rms`` / ``teacher_l2`` (the target features),
``student_rms`` / ``student_l2`` (the semantic-transfer block's output, what eq. 4 compares),
``head_rms`` / ``head_l2`` (what the task head reads at L: the attended, transfer or trunk
feature per ``head_input``), ``cosine`` (mean per-position cosine between student and teacher
features), ``fmse`` (eq. 4, with the run's softmax input), ``mse`` (plain MSE of the same
tensors), ``fmse_positions`` (mean effective positions ``1 / Σ p²`` of the F-MSE weights),
``dice`` (eq. 3), ``student_mask`` / ``teacher_mask`` (mean mask values). Run-wide:
``stats/weighted_attention`` = λ_A · attention, ``stats/weighted_semantic`` = λ_S · semantic
(their share of ``loss/total``), ``stats/transfer_to_task`` = their sum / ``loss/task``.
The per-level losses are those of the batch mean (``sample_weight`` as the loss uses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from md.student_train.losses import AttentionTransferLoss, FocalMSELoss, MSELoss
from md.train.loop import STATS_PREFIX


def rms(t: Tensor) -> Tensor:
    """sqrt(mean(t²)) over every element."""
    return t.float().pow(2).mean().sqrt()


def position_l2(t: Tensor) -> Tensor:
    """Mean over B, H, W of the channel vector's L2 norm; t (B, C, H, W)."""
    return t.float().pow(2).sum(1).sqrt().mean()


def position_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over B, H, W of the cosine between the channel vectors of a and b."""
    a, b = a.float(), b.float()
    dot = (a * b).sum(1)
    na, nb = a.pow(2).sum(1).sqrt(), b.pow(2).sum(1).sqrt()
    return (dot / (na * nb).clamp_min(eps)).mean()


def effective_positions(weights: Tensor) -> Tensor:
    """Mean over the batch of 1 / Σ p² of per-image weights (B, H, W) summing to 1."""
    return (1.0 / weights.flatten(1).pow(2).sum(1)).mean()


def level_stats(
    student_features: Tensor,
    teacher_features: Tensor,
    student_mask: Tensor,
    teacher_mask: Tensor,
    head_input: Tensor | None,
    *,
    focal_softmax: str = "sum",
    sample_weight: Tensor | None = None,
) -> dict[str, float]:
    """The per-level fields of the module docstring (unprefixed) as floats."""
    extra = () if sample_weight is None else (sample_weight,)
    focal = FocalMSELoss(softmax_input=focal_softmax)
    with torch.no_grad():
        s, t = student_features.detach(), teacher_features.detach()
        ms, mt = student_mask.detach(), teacher_mask.detach()
        out = {
            "teacher_rms": rms(t),
            "teacher_l2": position_l2(t),
            "student_rms": rms(s),
            "student_l2": position_l2(s),
            "cosine": position_cosine(s, t),
            "fmse": focal(s, t, *extra),
            "mse": MSELoss()(s, t, *extra),
            "fmse_positions": effective_positions(focal.weights(s, t)),
            "dice": AttentionTransferLoss()(ms, mt, *extra),
            "student_mask": ms.float().mean(),
            "teacher_mask": mt.float().mean(),
        }
        if head_input is not None:
            h = head_input.detach()
            out["head_rms"], out["head_l2"] = rms(h), position_l2(h)
    return {k: float(v) for k, v in out.items()}


def transfer_stats(
    student: Mapping[str, Mapping[str, Tensor]],
    targets: Mapping[str, Mapping[str, Tensor]],
    head_inputs: Mapping[str, Tensor],
    parts: Mapping[str, Tensor],
    task: Tensor,
    *,
    levels: tuple[str, ...],
    attention_weight: float,
    semantic_weight: float,
    focal_softmax: str = "sum",
    sample_weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """All ``stats/...`` fields of one step as detached 0-d tensors (the loss function's
    output type; the loop averages them over ranks like the losses). `parts`: the
    `DistillationLoss` output (unweighted attention / semantic); `head_inputs`: the task
    head's input per level (may lack levels: no head fields there)."""
    device = task.device
    fields: dict[str, Any] = {}
    for lv in levels:
        per = level_stats(
            student["features"][lv],
            targets["features"][lv],
            student["masks"][lv],
            targets["masks"][lv],
            head_inputs.get(lv),
            focal_softmax=focal_softmax,
            sample_weight=sample_weight,
        )
        fields.update({f"{lv}/{k}": v for k, v in per.items()})
    with torch.no_grad():
        transfer = torch.zeros((), device=device)
        if "attention" in parts:
            fields["weighted_attention"] = attention_weight * parts["attention"].detach()
            transfer = transfer + fields["weighted_attention"]
        if "semantic" in parts:
            fields["weighted_semantic"] = semantic_weight * parts["semantic"].detach()
            transfer = transfer + fields["weighted_semantic"]
        fields["transfer_to_task"] = transfer / task.detach()
    return {
        STATS_PREFIX + k: torch.as_tensor(v, dtype=torch.float32, device=device).detach()
        for k, v in fields.items()
    }
