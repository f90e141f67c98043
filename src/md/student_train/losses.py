"""The MD knowledge-transfer losses (§3.3) as small modules over plain tensors.

- `AttentionTransferLoss`: Dice between the student and teacher masks (MD eq. 3).
- `FocalMSELoss`: F-MSE between student and teacher features (MD eq. 4).
- `MSELoss`: plain MSE, the "S(M)" ablation of MD Tables 7-8.
- `DistillationLoss`: the weighted sum over the distilled levels, with a switch per part.

All losses compute in float32 whatever the autocast dtype of their inputs (the F-MSE softmax
over thousands of positions is not something to do in bf16).

F-MSE gradient decision. Eq. 4 is ``L = Σ_hw p_hw · D_hw / C`` with ``D = Σ_c d`` and
``p = softmax_hw(D)``. If gradients flow through ``p`` too, ``∂L/∂D_j = p_j (1 + D_j − E_p[D]) / C``,
which is *negative* wherever ``D_j < E_p[D] − 1``: the optimiser is then rewarded for raising
the error at easy positions (it flattens the softmax and moves weight off the hard ones). The
paper describes ``p`` as "a 2-D re-weighting mask" that makes the optimisation "focus" on
mis-predicted areas, which is what a constant weight does: ``∂L/∂D_j = p_j / C ≥ 0``, every
position's error is pushed down, hard ones harder. So by default the weights are detached
(``weights_grad=False``); ``weights_grad=True`` is the literal reading, kept as an option.
The loss value is the same either way.

F-MSE weight spread. With ``D`` summed over C channels the softmax is nearly one-hot on our
features: on the MD students of docs/reproduction.md the effective number of positions
``1 / Σ p²`` is 1.0-1.15 per image at every level (of 20-320), so eq. 4 trains the single
worst position of each map. ``softmax_input="mean"`` takes the softmax of ``D / C`` (the
per-channel mean error) instead, which spread the same maps over 13-230 positions; the
default ``"sum"`` is the paper's eq. 4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

SEMANTIC_LOSSES = ("fmse", "mse")
SOFTMAX_INPUTS = ("sum", "mean")  # F-MSE weights: softmax of D (eq. 4) or of D / C


class AttentionTransferLoss(nn.Module):
    """Dice loss between masks (MD eq. 3): ``1 − 2|m_s ⊗ m_t| / (|m_s| + |m_t|)``.

    ``|·|`` sums over the pixels of one image; the loss is computed per image, then averaged
    over the batch. ``eps`` keeps two empty masks at loss 0 (not 0/0).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self, m_student: Tensor, m_teacher: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        """m_student, m_teacher (B, 1, H, W) in [0, 1] -> scalar in [0, 1].
        `sample_weight` (B,): per-image weights, Σ w_b · loss_b / B."""
        s, t = m_student.float().flatten(1), m_teacher.float().flatten(1)  # (B, H·W)
        inter = (s * t).sum(1)
        dice = (2 * inter + self.eps) / (s.sum(1) + t.sum(1) + self.eps)
        return _batch_mean(1 - dice, sample_weight)


class FocalMSELoss(nn.Module):
    """Focal MSE (MD eq. 4): softmax-over-positions re-weighted squared error.

    ``d = (f_s − f_t)²`` (B, C, H, W); ``D = Σ_c d`` (B, H, W); ``p = softmax(D)`` over the
    H·W positions of each image; per image ``Σ_hw p·D / C``; mean over the batch. ``p`` is
    a constant re-weighting unless ``weights_grad`` (see the module docstring).
    """

    def __init__(self, weights_grad: bool = False, softmax_input: str = "sum") -> None:
        super().__init__()
        if softmax_input not in SOFTMAX_INPUTS:
            raise ValueError(
                f"softmax_input must be one of {SOFTMAX_INPUTS}, got {softmax_input!r}"
            )
        self.weights_grad = weights_grad
        self.softmax_input = softmax_input

    def _logits(self, dist: Tensor, channels: int) -> Tensor:
        return dist / channels if self.softmax_input == "mean" else dist

    def forward(
        self, f_student: Tensor, f_teacher: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        """f_student, f_teacher (B, C, H, W) -> scalar >= 0 (`sample_weight`: see Dice)."""
        d = (f_student.float() - f_teacher.float()).pow(2)
        channels = d.shape[1]
        dist = d.sum(1).flatten(1)  # D: (B, H·W)
        logits = self._logits(dist if self.weights_grad else dist.detach(), channels)
        weights = torch.softmax(logits, dim=1)
        return _batch_mean((weights * dist).sum(1) / channels, sample_weight)

    def weights(self, f_student: Tensor, f_teacher: Tensor) -> Tensor:
        """The re-weighting mask p (B, H, W), summing to 1 per image (MD Fig. 4)."""
        d = (f_student.float() - f_teacher.float()).pow(2)
        dist = d.sum(1)
        logits = self._logits(dist.flatten(1), d.shape[1])
        return torch.softmax(logits, dim=1).view_as(dist)


class MSELoss(nn.Module):
    """Plain MSE over every element, the S(M) ablation: mean of ``(f_s − f_t)²``."""

    def forward(
        self, f_student: Tensor, f_teacher: Tensor, sample_weight: Tensor | None = None
    ) -> Tensor:
        """f_student, f_teacher (B, C, H, W) -> scalar >= 0 (`sample_weight`: see Dice)."""
        d = (f_student.float() - f_teacher.float()).pow(2)
        if sample_weight is None:
            return d.mean()
        return _batch_mean(d.flatten(1).mean(1), sample_weight)


class DistillationLoss(nn.Module):
    """Attention + semantic transfer over the distilled levels (each the mean over levels).

    ``forward(student, targets)`` takes the student's ``{"features": {L}, "masks": {L}}`` and
    the teacher targets in the same form (features (B, C, H, W), masks (B, 1, H, W)) and
    returns the *unweighted* parts ``{"attention", "semantic"}`` (only the enabled ones) and
    ``"distill"`` = λ_A·attention + λ_S·semantic.
    """

    def __init__(
        self,
        levels: Sequence[str],
        *,
        attention: bool = True,
        semantic: bool = True,
        semantic_loss: str = "fmse",
        attention_weight: float = 1.0,
        semantic_weight: float = 1.0,
        focal_weights_grad: bool = False,
        focal_softmax: str = "sum",
    ) -> None:
        super().__init__()
        if semantic_loss not in SEMANTIC_LOSSES:
            raise ValueError(
                f"semantic_loss must be one of {SEMANTIC_LOSSES}, got {semantic_loss!r}"
            )
        self.levels = tuple(levels)
        self.attention, self.semantic = attention, semantic
        self.attention_weight, self.semantic_weight = attention_weight, semantic_weight
        self.attention_loss = AttentionTransferLoss()
        self.semantic_loss: nn.Module = (
            FocalMSELoss(focal_weights_grad, focal_softmax)
            if semantic_loss == "fmse"
            else MSELoss()
        )

    def forward(
        self,
        student: Mapping[str, Mapping[str, Tensor]],
        targets: Mapping[str, Mapping[str, Tensor]],
        sample_weight: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """`sample_weight` (B,): per-image weights of both transfer losses (group
        reweighting, `md.train.group_weights`); None: the plain batch mean."""
        parts: dict[str, Tensor] = {}
        extra = () if sample_weight is None else (sample_weight,)
        if self.attention:
            parts["attention"] = torch.stack(
                [
                    self.attention_loss(student["masks"][lv], targets["masks"][lv], *extra)
                    for lv in self.levels
                ]
            ).mean()
        if self.semantic:
            parts["semantic"] = torch.stack(
                [
                    self.semantic_loss(student["features"][lv], targets["features"][lv], *extra)
                    for lv in self.levels
                ]
            ).mean()
        total = torch.zeros((), device=_device(student))
        if "attention" in parts:
            total = total + self.attention_weight * parts["attention"]
        if "semantic" in parts:
            total = total + self.semantic_weight * parts["semantic"]
        parts["distill"] = total
        return parts


def _batch_mean(per_image: Tensor, sample_weight: Tensor | None) -> Tensor:
    """Mean over the batch, or Σ_b w_b · loss_b / B (linear in the weights)."""
    if sample_weight is None:
        return per_image.mean()
    return (per_image * sample_weight.float().to(per_image.device)).sum() / per_image.shape[0]


def _device(student: Mapping[str, Mapping[str, Tensor]]) -> torch.device:
    for t in student["features"].values():
        return t.device
    return torch.device("cpu")
