"""Guided Attentive Feature Fusion (GAFF), the teacher's fusion module (MD eq. 1-3).

At one backbone level, for visible features ``f_vis`` and thermal features ``f_th``
(both (B, C, H, W)):

- intra-modality masks ``m_intra^m = sigmoid(conv3x3(f^m))`` (B, 1, H, W), one per modality,
  supervised by a ground-truth foreground mask (Dice or BCE);
- inter-modality mask ``m_inter = softmax(conv3x3(cat(f_vis, f_th)))`` (B, 2, H, W),
  channel 0 = visible, 1 = thermal (so the two sum to 1); "guided" by a cross-entropy
  whose label at a foreground pixel is the modality whose intra mask is closer to the
  ground truth there;
- ``f_w^m = f^m ⊗ (1 + m_intra^m) ⊗ (1 + m_inter^m)``, ``fused = (f_w^vis + f_w^th) / 2``
  (eq. 1-2);
- ``teacher_mask = m_intra^vis·m_inter^vis + m_intra^th·m_inter^th`` (eq. 3): a convex
  combination of values in [0, 1], hence in [0, 1].

Foreground targets are built here too: filled ellipses inscribed in pedestrian boxes
(detection) or the non-background fraction of each feature cell (segmentation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md.errors import MdError

_EPS = 1e-6


class GAFF(nn.Module):
    """GAFF fusion at one level; ``channels`` is C of both modality features."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.intra_vis = nn.Conv2d(channels, 1, 3, padding=1)
        self.intra_th = nn.Conv2d(channels, 1, 3, padding=1)
        self.inter = nn.Conv2d(2 * channels, 2, 3, padding=1)

    def forward(self, f_vis: Tensor, f_th: Tensor) -> dict[str, Tensor]:
        """f_vis, f_th (B, C, H, W) -> {"fused" (B, C, H, W), "intra_vis" (B, 1, H, W),
        "intra_th" (B, 1, H, W), "inter" (B, 2, H, W) softmax (0 = visible, 1 = thermal),
        "teacher_mask" (B, 1, H, W) in [0, 1]}."""
        intra_vis = torch.sigmoid(self.intra_vis(f_vis))
        intra_th = torch.sigmoid(self.intra_th(f_th))
        inter = torch.softmax(self.inter(torch.cat([f_vis, f_th], dim=1)), dim=1)
        inter_vis, inter_th = inter[:, 0:1], inter[:, 1:2]
        weighted_vis = f_vis * (1 + intra_vis) * (1 + inter_vis)  # eq. 1
        weighted_th = f_th * (1 + intra_th) * (1 + inter_th)
        return {
            "fused": (weighted_vis + weighted_th) / 2,  # eq. 2
            "intra_vis": intra_vis,
            "intra_th": intra_th,
            "inter": inter,
            "teacher_mask": intra_vis * inter_vis + intra_th * inter_th,  # eq. 3
        }


def dice_loss(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss per sample, averaged over the batch.

    pred, target (B, 1, H, W) in [0, 1] -> scalar. ``smooth`` keeps images without any
    foreground defined (the loss then pushes ``pred`` towards 0).
    """
    p, g = pred.float().flatten(1), target.float().flatten(1)
    dice = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1 - dice).mean()


def bce_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on probabilities, mean over pixels; pred, target (B, 1, H, W).

    Written out (not ``F.binary_cross_entropy``) because that op refuses to run under CUDA
    autocast; computed in float32 with clamped logs.
    """
    p, g = pred.float(), target.float()
    return -(g * p.clamp_min(_EPS).log() + (1 - g) * (1 - p).clamp_min(_EPS).log()).mean()


class GAFFLoss(nn.Module):
    """GAFF supervision at one level -> {"intra", "inter"} (scalars).

    Args:
        intra_loss: "dice" or "bce"; applied to each modality's intra mask, the two summed.
        tie_margin: pixels where |err_vis - err_th| < tie_margin get no inter label.

    ``forward(intra_vis, intra_th, inter, foreground)`` with intra masks (B, 1, H, W),
    ``inter`` the softmax (B, 2, H, W) and ``foreground`` (B, 1, H, W) in [0, 1].
    Inter labels: at foreground pixels (foreground > 0.5), err^m = |m_intra^m - fg|
    (detached); label 0 (visible) if err_vis < err_th, 1 (thermal) if err_th < err_vis;
    background and near-ties are ignored. Cross-entropy is averaged over labelled pixels,
    and is an exact, grad-safe 0 when none qualifies.
    """

    def __init__(self, intra_loss: str = "dice", tie_margin: float = 0.1) -> None:
        super().__init__()
        if intra_loss not in ("dice", "bce"):
            raise MdError(f"GAFF intra_loss must be 'dice' or 'bce', got {intra_loss!r}")
        self.intra_loss = intra_loss
        self.tie_margin = tie_margin

    def forward(
        self, intra_vis: Tensor, intra_th: Tensor, inter: Tensor, foreground: Tensor
    ) -> dict[str, Tensor]:
        """See the class docstring; returns {"intra": scalar, "inter": scalar}."""
        loss_fn = dice_loss if self.intra_loss == "dice" else bce_loss
        intra = loss_fn(intra_vis, foreground) + loss_fn(intra_th, foreground)
        label, valid = self.inter_labels(intra_vis, intra_th, foreground)
        log_p = inter.float().clamp_min(_EPS).log().gather(1, label)  # (B, 1, H, W)
        valid_f = valid.float()
        inter_loss = -(log_p * valid_f).sum() / valid_f.sum().clamp_min(1.0)
        return {"intra": intra, "inter": inter_loss}

    @torch.no_grad()
    def inter_labels(
        self, intra_vis: Tensor, intra_th: Tensor, foreground: Tensor
    ) -> tuple[Tensor, Tensor]:
        """-> (label (B, 1, H, W) int64 with 0 = visible / 1 = thermal, valid (B, 1, H, W) bool)."""
        err_vis = (intra_vis.float() - foreground).abs()
        err_th = (intra_th.float() - foreground).abs()
        label = (err_th < err_vis).long()
        valid = (foreground > 0.5) & ((err_vis - err_th).abs() >= self.tie_margin)
        return label, valid


def foreground_from_boxes(
    boxes: Sequence[Tensor],
    image_size: tuple[int, int],
    out_size: tuple[int, int],
    ignore: Sequence[Tensor] | None = None,
) -> Tensor:
    """Filled ellipses inscribed in the boxes, rasterised at feature resolution.

    boxes: per image (N_i, 4) x1, y1, x2, y2 in image pixels; image_size (H, W);
    out_size (h, w); ignore: per image (N_i,) bool, True boxes are left out.
    Returns (B, 1, h, w) float32 in {0, 1}.

    Box coordinates are scaled by (w/W, h/H); a cell (i, j) is foreground when its centre
    (j + 0.5, i + 0.5) lies inside an ellipse. So that small pedestrians are not lost at
    coarse levels, the cell holding each box centre is always foreground.
    """
    if ignore is not None and len(ignore) != len(boxes):
        raise MdError(f"{len(boxes)} box tensors but {len(ignore)} ignore tensors")
    masks = [
        _ellipse_mask(b, None if ignore is None else ignore[i], image_size, out_size)
        for i, b in enumerate(boxes)
    ]
    return torch.stack(masks).unsqueeze(1)


def _ellipse_mask(
    boxes: Tensor, ignore: Tensor | None, image_size: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """One image: boxes (N, 4), ignore (N,) or None -> (h, w) float32 mask."""
    h, w = out_size
    out = torch.zeros(h, w, device=boxes.device)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if ignore is not None:
        keep &= ~ignore.to(torch.bool)
    b = boxes[keep].float()
    if b.numel() == 0:
        return out
    b = b * b.new_tensor([w / image_size[1], h / image_size[0]] * 2)  # feature coords
    cx, cy = ((b[:, 0] + b[:, 2]) / 2).view(-1, 1, 1), ((b[:, 1] + b[:, 3]) / 2).view(-1, 1, 1)
    rx, ry = ((b[:, 2] - b[:, 0]) / 2).view(-1, 1, 1), ((b[:, 3] - b[:, 1]) / 2).view(-1, 1, 1)
    ys = (torch.arange(h, device=b.device) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=b.device) + 0.5).view(1, 1, w)
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1  # (N, h, w)
    out[inside.any(0)] = 1.0
    cx, cy = cx.flatten(), cy.flatten()
    in_image = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    out[cy[in_image].long(), cx[in_image].long()] = 1.0  # centre cells
    return out


def foreground_from_labels(labels: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Non-background fraction per feature cell: labels (B, H, W) int -> (B, 1, h, w) in [0, 1].

    ``(labels != 0)`` area-pooled (adaptive average pooling) to ``out_size``: a soft target
    that Dice/BCE take as is; the inter-modality guidance counts a cell as foreground when
    more than half of it is non-background.
    """
    fg = (labels != 0).float().unsqueeze(1)  # (B, 1, H, W)
    return F.adaptive_avg_pool2d(fg, out_size)
