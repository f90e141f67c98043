"""PSPNet-style semantic segmentation head (MD §4.2: PSPNet on MFNet, 9 classes).

- Pyramid pooling module (Zhao et al., 2017) over the deepest level c5: average pooling to
  ``bins`` x ``bins`` grids (1, 2, 3, 6), a 1x1 conv per branch, bilinear upsampling back,
  concatenation with c5, then 3x3 conv-norm-ReLU.
- ResNet-18's c5 has stride 32 (a 20x15 map for a 640x480 MFNet image), far coarser than
  PSPNet's dilated stride-8 trunk, so thin classes (person, colour cone, bump) would be lost
  in the x32 upsampling. With ``use_c3=True`` (default) a light decoder, as in DeepLabv3+,
  upsamples the PSP output to c3 (stride 8), concatenates a 1x1 projection of c3 and applies
  one 3x3 conv-norm-ReLU before the classifier.
- logits are bilinearly upsampled to the image size; cross-entropy over all classes.
  Class 0 "unlabeled" counts in the MFNet metrics, so it is trained, not ignored.
- PSPNet's auxiliary c4 loss is not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md.models.normalisers import share_of_total, syncing_normalisers


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        # at least 2 channels per group: a 1x1 map (P6 of a small image) still has 2 values
        groups = (
            max(g for g in range(1, min(32, channels // 2) + 1) if channels % g == 0)
            if channels > 1
            else 1
        )
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"segmentation head: norm must be 'bn' or 'gn', got {kind!r}")


def _conv_norm_relu(cin: int, cout: int, kernel: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
    )


class PyramidPooling(nn.Module):
    """PSP pyramid pooling: (B, C, h, w) -> (B, C + len(bins) * branch_channels, h, w).

    Each branch: adaptive average pool to (bin, bin), 1x1 conv + ReLU, bilinear upsampling to
    (h, w). The branches have a conv bias and no normalization: a bin-1 branch holds one value
    per channel and image, so BatchNorm there is degenerate with small batches (and fails at
    batch size 1 in training).
    """

    def __init__(
        self,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        branch_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.bins = tuple(bins)
        branch_channels = branch_channels or max(1, in_channels // len(self.bins))
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, branch_channels, 1),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return torch.cat([x, *pooled], dim=1)


class SegmentationHead(nn.Module):
    """PSPNet head over c5 (and c3 when ``use_c3``): ``forward -> {"logits": (B, K, H, W)}``."""

    def __init__(
        self,
        in_channels: dict[str, int],
        *,
        num_classes: int = 9,  # MFNet: unlabeled + 8 classes
        bins: Sequence[int] = (1, 2, 3, 6),
        psp_channels: int = 128,  # PSPNet uses 512 on ResNet-50; R18-sized here
        use_c3: bool = True,  # stride-8 decoder, see the module docstring
        c3_channels: int = 48,  # c3 projection width (DeepLabv3+ uses 48)
        decoder_channels: int = 128,
        dropout: float = 0.1,  # before the classifier, as in PSPNet
        norm: str = "bn",  # "bn" | "gn"
        ignore_index: int | None = None,  # a label value left out of the loss; none by default
        class_weights: Sequence[float] | None = None,  # per-class CE weights; none = plain CE
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels["c5"], bins)
        self.bottleneck = _conv_norm_relu(self.ppm.out_channels, psp_channels, 3, norm)
        self.use_c3 = use_c3
        # The backbone levels `forward` reads (c4 is not one: PSPNet's c4 feeds only its
        # auxiliary loss, not used here); a distilled level outside these acts on the task
        # only through the trunk (issue 18, experiment 4).
        self.in_levels: tuple[str, ...] = ("c3", "c5") if use_c3 else ("c5",)
        if use_c3:
            self.c3_proj = _conv_norm_relu(in_channels["c3"], c3_channels, 1, norm)
            self.decoder = _conv_norm_relu(psp_channels + c3_channels, decoder_channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_channels if use_c3 else psp_channels, num_classes, 1)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries for {num_classes} classes"
            )
        weights = torch.tensor(list(class_weights or []), dtype=torch.float32)
        # A buffer (moves with .to(device)) kept out of the state dict: it is a training option
        # recorded in the checkpoint's model_args, not a learned weight.
        self.register_buffer("class_weights", weights if len(weights) else None, persistent=False)

    def forward(self, feats: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Tensor]:
        x = self.bottleneck(self.ppm(feats["c5"]))  # (B, psp, H/32, W/32)
        if self.use_c3:
            c3 = feats["c3"]
            x = F.interpolate(x, size=c3.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder(torch.cat([x, self.c3_proj(c3)], dim=1))  # (B, dec, H/8, W/8)
        logits = self.classifier(self.dropout(x))
        size = (int(image_size[0]), int(image_size[1]))
        return {"logits": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Any]) -> dict[str, Tensor]:
        """``{"seg": mean cross-entropy}``; targets ``labels`` (B, H, W) int64 in [0, K)."""
        logits, labels = outputs["logits"], targets["labels"]
        if labels.shape[-2:] != logits.shape[-2:]:
            raise ValueError(
                f"segmentation loss: labels {tuple(labels.shape)} do not match logits "
                f"{tuple(logits.shape)}; pass image_size = the label size to forward()"
            )
        ignore = -100 if self.ignore_index is None else self.ignore_index  # -100: no label uses it
        weight: Tensor | None = self.class_weights  # type: ignore[assignment]
        sample_weight = targets.get("sample_weight")
        if sample_weight is not None:
            # group reweighting: every pixel of image b weighs w_b; the normaliser stays the
            # unweighted one (the class-weight sum over labelled pixels), so the loss is
            # linear in the weights and w = 1 everywhere is the plain mean cross-entropy
            labels = labels.long()
            valid = labels != ignore
            safe = labels.clamp(min=0, max=logits.shape[1] - 1)
            per_pixel = weight[safe] * valid if weight is not None else valid.float()
            ce = F.cross_entropy(
                logits.float(), labels, weight=weight, ignore_index=ignore, reduction="none"
            )
            total = (ce.flatten(1).sum(1) * sample_weight.float().to(ce.device)).sum()
            return {"seg": total / share_of_total(per_pixel.sum(), minimum=1e-12)}
        if (weight is None and self.ignore_index is None) or not syncing_normalisers():
            return {
                "seg": F.cross_entropy(
                    logits.float(), labels.long(), weight=weight, ignore_index=ignore
                )
            }
        # DDP step: divide by the global batch's weight sum (or count of labelled pixels), not
        # this rank's, so the ranks' average is the one-process loss on the global batch.
        labels = labels.long()
        valid = labels != ignore
        per_pixel = weight[labels[valid]] if weight is not None else valid.float()
        total = F.cross_entropy(
            logits.float(), labels, weight=weight, ignore_index=ignore, reduction="sum"
        )
        return {"seg": total / share_of_total(per_pixel.sum(), minimum=1e-12)}

    @torch.no_grad()
    def predict(self, outputs: dict[str, Tensor]) -> Tensor:
        """(B, H, W) int64 class map (argmax over classes)."""
        return outputs["logits"].argmax(dim=1)

    def average(self, outputs_list: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Decision-level fusion: mean of the softmax probabilities.

        Returned as log-probabilities (a valid logit form: softmax(log p) = p), computed by
        logsumexp of log-softmaxes, so :meth:`predict` and :meth:`loss` apply unchanged.
        """
        if not outputs_list:
            raise ValueError("segmentation average: no outputs to average")
        log_probs = torch.stack([F.log_softmax(o["logits"], dim=1) for o in outputs_list])
        return {"logits": torch.logsumexp(log_probs, dim=0) - math.log(len(outputs_list))}
