"""RetinaNet-style pedestrian detection head (MD §4.2: RetinaNet + Mutual Guidance).

Pieces, in the order data flows:

- :class:`FeaturePyramid`: FPN-like neck over c3..c5 (lateral 1x1, top-down nearest
  upsampling + add, 3x3 output convs) giving P3..P5, plus P6 by a stride-2 3x3 conv on P5.
  P6 is on by default because KAIST pedestrians reach ~400 px in a 512 px frame: without it
  the tallest anchors are ~200 px and about one "reasonable" (>= 55 px) pedestrian in ten
  has no anchor with IoU >= 0.5 (see the anchor notes below).
- shared per-level towers (``tower_depth`` x [3x3 conv, GroupNorm, ReLU]), one for
  classification and one for box regression, then a 3x3 output conv each.
- anchors: ``K = len(anchor_scales) * len(anchor_ratios)`` per location, 6 by default.
  Anchors are parametrized by height: ``anchor_size * stride * scale`` with scales
  ``2^{0, 1/3, 2/3}`` and width/height ratios ``(0.41, 0.6)`` (0.41 is the usual
  Caltech/KAIST pedestrian ratio; 0.6 covers walking side views, partial occlusion and
  loose boxes). On random pedestrian boxes (height 25-400 px log-uniform, w/h 0.3-0.65,
  640x512 frame), P3..P6 with these anchors give every box of height >= 55 px at least 6
  anchors with IoU >= 0.5, and 99% of all boxes at least one (P3..P5 alone: 89% of the
  >= 55 px boxes, 92% of all; anchor height 3 x stride: 99.5% of them, but with 8.6
  instead of 14.6 positive anchors per box on average).
- assignment (per image, no gradient): ``"iou"`` (RetinaNet) or ``"mutual_guidance"``
  (Zhang et al., ACCV 2020); see :func:`iou_assign` and :func:`mutual_guidance_assign`.
- losses: :class:`FocalLoss` (alpha 0.25, gamma 2, summed and divided by the number of
  classification positives) and :class:`BoxRegressionLoss` (smooth L1, beta 1/9, on
  ``(dx, dy, dw, dh) / std`` with std (0.1, 0.1, 0.2, 0.2); or GIoU on decoded boxes), summed
  and divided by the number of regression positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md.models.heads.boxes import (
    DEFAULT_BOX_STD,
    anchor_shapes,
    box_area,
    box_giou_aligned,
    box_ioa,
    box_iou,
    clip_boxes,
    decode,
    encode,
    grid_anchors,
    nms,
)
from md.models.normalisers import share_of_total

ASSIGNERS = ("iou", "mutual_guidance")


def _level_stride(key: str) -> int:
    """Backbone level name -> stride in pixels: "c3" -> 8 (ResNet convention, stride 2^n)."""
    if len(key) < 2 or key[0] != "c" or not key[1:].isdigit():
        raise ValueError(
            f"detection head: feature key {key!r} is not of the form 'c<N>' (e.g. 'c3')"
        )
    return 2 ** int(key[1:])


def _norm(kind: str, channels: int) -> nn.Module:
    """GroupNorm with the largest group count <= 32 that divides ``channels``, or nothing."""
    if kind == "none":
        return nn.Identity()
    if kind == "gn":
        # at least 2 channels per group: a 1x1 map (P6 of a small image) still has 2 values
        groups = (
            max(g for g in range(1, min(32, channels // 2) + 1) if channels % g == 0)
            if channels > 1
            else 1
        )
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"detection head: norm must be 'gn' or 'none', got {kind!r}")


class FeaturePyramid(nn.Module):
    """FPN-like neck: levels c3..c5 (strides 8..32) -> P3..P5 (+ P6, stride 64).

    Inputs: list of (B, C_l, H_l, W_l), finest first. Output: list of (B, channels, H_l, W_l),
    finest first, one more entry when ``use_p6``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, use_p6: bool = True) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_p6 else None

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        # top-down: each level adds the (nearest-)upsampled coarser merged level
        for i in range(len(laterals) - 2, -1, -1):
            up = F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
            laterals[i] = laterals[i] + up
        outs = [conv(x) for conv, x in zip(self.output, laterals, strict=True)]
        if self.p6 is not None:
            outs.append(self.p6(outs[-1]))
        return outs


def _tower(channels: int, depth: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017), *summed*; the caller divides by #positives.

    logits: (N,) raw scores, targets: (N,) in [0, 1] -> scalar.
    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``: easy negatives (the ~10^4 background anchors
    per image) are down-weighted so they don't swamp the few pedestrians.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """`weight` (N,): per-anchor loss weights (group reweighting); None: all 1."""
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        alpha_t = self.alpha * targets + (1 - self.alpha) * (1 - targets)
        loss = alpha_t * (1 - p_t) ** self.gamma * ce
        return (loss if weight is None else loss * weight).sum()


class BoxRegressionLoss(nn.Module):
    """Box regression loss, *summed* over positives; the caller divides by #positives.

    deltas: (P, 4) predicted, targets: (P, 4) matched GT xyxy, anchors: (P, 4) xyxy -> scalar.
    ``"smooth_l1"``: smooth L1 (beta) on the std-normalized (dx, dy, dw, dh), summed over the
    4 coordinates; ``"giou"``: 1 - GIoU of the decoded box with the GT (scale invariant).
    """

    def __init__(
        self, kind: str = "smooth_l1", std: Sequence[float] = DEFAULT_BOX_STD, beta: float = 1 / 9
    ) -> None:
        super().__init__()
        if kind not in ("smooth_l1", "giou"):
            raise ValueError(
                f"detection head: box_loss must be 'smooth_l1' or 'giou', got {kind!r}"
            )
        self.kind, self.std, self.beta = kind, tuple(std), beta

    def forward(
        self, deltas: Tensor, targets: Tensor, anchors: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        """`weight` (P,): per-box loss weights (group reweighting); None: all 1."""
        if weight is not None:
            if self.kind == "giou":
                per = 1 - box_giou_aligned(decode(deltas, anchors, self.std), targets)
            else:
                per = F.smooth_l1_loss(
                    deltas, encode(targets, anchors, self.std), beta=self.beta, reduction="none"
                ).sum(-1)
            return (per * weight).sum()
        if self.kind == "giou":
            return (1 - box_giou_aligned(decode(deltas, anchors, self.std), targets)).sum()
        return F.smooth_l1_loss(
            deltas, encode(targets, anchors, self.std), beta=self.beta, reduction="sum"
        )


@dataclass
class Assignment:
    """Training targets of one image's A anchors."""

    cls_target: Tensor  # (A,) float: 1 pedestrian, 0 background
    cls_valid: Tensor  # (A,) bool: False = ignored by the classification loss
    box_pos: Tensor  # (A,) bool: anchors whose box is regressed
    box_target: Tensor  # (A, 4) xyxy GT box matched to each anchor (read where box_pos)


def _split_gt(boxes: Tensor, ignore: Tensor | None) -> tuple[Tensor, Tensor]:
    """(N, 4), (N,) -> (valid (G, 4), ignored (I, 4)); zero-area boxes are dropped (they
    cannot be encoded: log(0))."""
    boxes = boxes.reshape(-1, 4).float()
    ignore = (
        torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        if ignore is None
        else ignore.bool()
    )
    proper = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[proper & ~ignore], boxes[proper & ignore]


def _in_ignore_region(
    anchors: Tensor, ignored: Tensor, neg_iou: float, ignore_ioa: float
) -> Tensor:
    """(A,) bool: anchors overlapping an ignored GT box (IoU >= neg_iou, or at least
    ``ignore_ioa`` of the anchor inside it: ignore boxes are often large crowd regions)."""
    if len(ignored) == 0:
        return torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
    iou = box_iou(anchors, ignored).amax(dim=1)
    ioa = box_ioa(anchors, ignored).amax(dim=1)
    return (iou >= neg_iou) | (ioa >= ignore_ioa)


def _finish(
    anchors: Tensor,
    valid: Tensor,
    ignored: Tensor,
    pos: Tensor,
    neg: Tensor,
    box_pos: Tensor,
    box_gt: Tensor,
    neg_iou: float,
    ignore_ioa: float,
) -> Assignment:
    """Pack per-anchor decisions; negatives inside ignore regions become ignored."""
    neg = neg & ~pos & ~_in_ignore_region(anchors, ignored, neg_iou, ignore_ioa)
    box_target = valid[box_gt] if len(valid) else torch.zeros_like(anchors)
    return Assignment(pos.float(), pos | neg, box_pos, box_target)


@torch.no_grad()
def iou_assign(
    anchors: Tensor,
    boxes: Tensor,
    ignore: Tensor | None = None,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    ignore_ioa: float = 0.5,
) -> Assignment:
    """RetinaNet assignment by anchor/GT IoU.

    anchors: (A, 4), boxes: (N, 4) xyxy, ignore: (N,) bool. Max IoU over non-ignored GTs
    >= pos_iou: positive (for both losses); < neg_iou: negative; in between: ignored. Each
    GT's best anchor is positive whatever its IoU (small pedestrians). Negatives overlapping
    an ignored GT (see :func:`_in_ignore_region`) are ignored, never negative.
    """
    valid, ignored = _split_gt(
        boxes.to(anchors.device), None if ignore is None else ignore.to(anchors.device)
    )
    num_anchors = len(anchors)
    best_iou = anchors.new_zeros(num_anchors)
    best_gt = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
    if len(valid):
        iou = box_iou(valid, anchors)  # (G, A)
        best_iou, best_gt = iou.max(dim=0)
        g_best = iou.argmax(dim=1)  # (G,) each GT's best anchor
        gt_index = torch.arange(len(valid), device=anchors.device)
        has = iou[gt_index, g_best] > 0  # a GT touching no anchor at all gets none
        best_gt[g_best[has]] = gt_index[has]
        best_iou[g_best[has]] = 1.0
    pos = best_iou >= pos_iou
    return _finish(
        anchors, valid, ignored, pos, best_iou < neg_iou, pos, best_gt, neg_iou, ignore_ioa
    )


def _rank_select(quality: Tensor, n_pos: Tensor, n_cand: Tensor) -> tuple[Tensor, Tensor]:
    """Per GT, rank anchors by ``quality`` and keep the top ones.

    quality: (G, A) >= 0; n_pos, n_cand: (G,) with n_cand >= n_pos. Each anchor competes only
    for the GT where its quality is highest. Returns (level (A,): 2 within a GT's top n_pos,
    1 within its top n_cand, 0 otherwise; gt index (A,)). Zero quality never qualifies.
    """
    q = quality * (quality == quality.amax(dim=0, keepdim=True))
    ranks = q.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (G, A)
    usable = q > 0
    level = (usable & (ranks < n_pos[:, None])).long() + (usable & (ranks < n_cand[:, None])).long()
    return level.max(dim=0)


@torch.no_grad()
def mutual_guidance_assign(
    anchors: Tensor,
    boxes: Tensor,
    ignore: Tensor | None,
    pred_boxes: Tensor,
    scores: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    ignore_ioa: float = 0.5,
    sigma: float = 2.0,
) -> Assignment:
    """Mutual Guidance assignment (Zhang, Fromont, Lefevre, Avignon, ACCV 2020).

    anchors, pred_boxes: (A, 4) xyxy (pred = the current decoded regression); scores: (A,)
    current sigmoid scores; boxes: (N, 4); ignore: (N,) bool. As in the authors' ACCV code:
    - how many: per GT, n_pos = #anchors with anchor IoU >= pos_iou and n_cand = #anchors
      with IoU >= neg_iou, counting each anchor for its best GT only; n_pos >= 1 (the code
      gets this by setting each GT's best anchor IoU to 1) and n_cand >= n_pos;
    - localize to classify: anchors are ranked by IoU(*predicted box*, GT); the top n_pos are
      classification positives, the next up to n_cand ignored, the rest negatives;
    - classify to localize: anchors are ranked by ``IoU(anchor, GT) ** ((sigma - s) / sigma)``
      (s = the anchor's score: a confident anchor's IoU is raised towards 1); the top n_pos
      are regression positives, regressing that GT;
    - an anchor ranks only for the GT it matches best under each criterion; hard 0/1 labels
      (no dynamic k or soft IoU targets, which came in later versions of that code).
    Simplification: the code also lifts each GT's best predicted/weighted anchor to 1 before
    the best-GT competition; here that anchor competes with its raw value.
    Ignored GTs turn overlapping negatives into ignored anchors, as in :func:`iou_assign`.
    """
    device = anchors.device
    valid, ignored = _split_gt(boxes.to(device), None if ignore is None else ignore.to(device))
    if len(valid) == 0:
        return iou_assign(
            anchors,
            ignored,
            torch.ones(len(ignored), dtype=torch.bool, device=device),
            pos_iou,
            neg_iou,
            ignore_ioa,
        )
    anchor_iou = box_iou(valid, anchors)  # (G, A)
    own = anchor_iou * (anchor_iou == anchor_iou.amax(dim=0, keepdim=True))  # best GT only
    n_pos = (own >= pos_iou).sum(dim=1).clamp(min=1)
    n_cand = torch.maximum((own >= neg_iou).sum(dim=1), n_pos)
    cls_level, _ = _rank_select(box_iou(valid, pred_boxes), n_pos, n_cand)
    weighted = anchor_iou ** ((sigma - scores.clamp(0, 1))[None, :] / sigma)
    box_level, box_gt = _rank_select(weighted, n_pos, n_pos)
    return _finish(
        anchors,
        valid,
        ignored,
        cls_level == 2,
        cls_level == 0,
        box_level == 2,
        box_gt,
        neg_iou,
        ignore_ioa,
    )


class DetectionHead(nn.Module):
    """RetinaNet-style single-class (pedestrian) head over backbone levels c3..c5.

    ``forward(feats, image_size)`` returns
    ``{"cls_logits": (B, A, 1), "box_deltas": (B, A, 4), "anchors": (A, 4) xyxy,
    "image_size": (H, W)}`` with A = K * sum_l H_l * W_l over P3..P5(+P6).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        *,
        neck_channels: int = 128,  # R18-sized (RetinaNet uses 256 on ResNet-50)
        use_p6: bool = True,  # see the module docstring: tall, near pedestrians
        tower_depth: int = 2,  # RetinaNet uses 4; 2 keeps the head light on CPU / edge
        norm: str = "gn",  # "gn" | "none"; batch-size independent, unlike BatchNorm
        anchor_size: float = 4.0,  # anchor height at scale 1, in units of the level stride
        anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios: Sequence[float] = (0.41, 0.6),  # width / height
        assign: str = "iou",  # "iou" | "mutual_guidance"
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        ignore_ioa: float = 0.5,  # anchor fraction inside an ignored GT that makes it ignored
        mg_sigma: float = 2.0,  # Mutual Guidance score weighting (the paper's sigma)
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        prior_prob: float = 0.01,  # initial foreground probability of every anchor
        box_loss: str = "smooth_l1",  # "smooth_l1" | "giou"
        box_std: Sequence[float] = DEFAULT_BOX_STD,
        smooth_l1_beta: float = 1 / 9,
        box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if assign not in ASSIGNERS:
            raise ValueError(f"detection head: assign must be one of {ASSIGNERS}, got {assign!r}")
        self.levels = sorted(in_channels, key=_level_stride)
        self.in_levels: tuple[str, ...] = tuple(self.levels)  # every level feeds the neck
        self.strides = [_level_stride(k) for k in self.levels] + (
            [_level_stride(self.levels[-1]) * 2] if use_p6 else []
        )
        self.shapes = [
            anchor_shapes(anchor_size * s, anchor_scales, anchor_ratios) for s in self.strides
        ]
        k = len(anchor_scales) * len(anchor_ratios)
        self.num_anchors_per_location = k
        self.neck = FeaturePyramid([in_channels[lv] for lv in self.levels], neck_channels, use_p6)
        self.cls_tower = _tower(neck_channels, tower_depth, norm)
        self.box_tower = _tower(neck_channels, tower_depth, norm)
        self.cls_out = nn.Conv2d(neck_channels, k, 3, padding=1)
        self.box_out = nn.Conv2d(neck_channels, k * 4, 3, padding=1)
        self._init_weights(prior_prob)
        self.assign, self.pos_iou, self.neg_iou = assign, pos_iou, neg_iou
        self.ignore_ioa, self.mg_sigma, self.box_std = ignore_ioa, mg_sigma, tuple(box_std)
        self.focal = FocalLoss(focal_alpha, focal_gamma)
        self.box_loss = BoxRegressionLoss(box_loss, box_std, smooth_l1_beta)
        self.box_weight = box_weight
        self._anchor_cache: dict[tuple[Any, ...], Tensor] = {}

    def _init_weights(self, prior_prob: float) -> None:
        for m in [*self.cls_tower, *self.box_tower, self.cls_out, self.box_out]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # every anchor starts at p = prior_prob, so the ~10^4 negatives don't blow up the
        # focal loss in the first iterations (RetinaNet §4.1)
        assert self.cls_out.bias is not None
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """(A, 4) anchors for these pyramid sizes, cached per (sizes, device)."""
        key = (tuple(feature_sizes), str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = grid_anchors(feature_sizes, self.strides, self.shapes, device)
        return self._anchor_cache[key]

    def forward(self, feats: dict[str, Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        pyramid = self.neck([feats[lv] for lv in self.levels])  # [(B, C, H_l, W_l)]
        cls, box = [], []
        for p in pyramid:
            b = p.shape[0]
            # (B, K, H, W) -> (B, H, W, K) -> (B, H*W*K, 1): the anchor order of grid_anchors
            cls.append(self.cls_out(self.cls_tower(p)).permute(0, 2, 3, 1).reshape(b, -1, 1))
            box.append(self.box_out(self.box_tower(p)).permute(0, 2, 3, 1).reshape(b, -1, 4))
        sizes = [(p.shape[-2], p.shape[-1]) for p in pyramid]
        return {
            "cls_logits": torch.cat(cls, dim=1),
            "box_deltas": torch.cat(box, dim=1),
            "anchors": self.anchors(sizes, pyramid[0].device),
            "image_size": (int(image_size[0]), int(image_size[1])),
        }

    def _assign_image(
        self, anchors: Tensor, boxes: Tensor, ignore: Tensor | None, logits: Tensor, deltas: Tensor
    ) -> Assignment:
        """Targets of one image; logits (A,), deltas (A, 4) are only read (Mutual Guidance)."""
        if self.assign == "mutual_guidance":
            pred_boxes = decode(deltas.detach(), anchors, self.box_std)
            return mutual_guidance_assign(
                anchors,
                boxes,
                ignore,
                pred_boxes,
                logits.detach().sigmoid(),
                self.pos_iou,
                self.neg_iou,
                self.ignore_ioa,
                self.mg_sigma,
            )
        return iou_assign(anchors, boxes, ignore, self.pos_iou, self.neg_iou, self.ignore_ioa)

    def loss(self, outputs: dict[str, Any], targets: dict[str, Any]) -> dict[str, Tensor]:
        """Named loss parts ``{"cls": focal, "box": regression}`` (scalars).

        targets: ``boxes`` list of B (N_i, 4) xyxy pixel tensors, optional ``box_ignore`` list
        of B (N_i,) bool. Both parts are normalized by their number of positive anchors in the
        batch (at least 1), so an image without pedestrians still trains the background; in a
        DDP training step, by that of the global batch (`md.models.normalisers.share_of_total`).
        """
        logits = outputs["cls_logits"][..., 0].float()  # (B, A)
        deltas = outputs["box_deltas"].float()  # (B, A, 4)
        anchors = outputs["anchors"].float()  # (A, 4)
        ignores = targets.get("box_ignore")
        if ignores is None:
            ignores = [None] * len(targets["boxes"])
        if len(targets["boxes"]) != len(logits):
            raise ValueError(
                f"detection loss: {len(targets['boxes'])} target box lists for a batch of {len(logits)}"
            )
        parts = [
            self._assign_image(anchors, b, ig, lg, d)
            for b, ig, lg, d in zip(targets["boxes"], ignores, logits, deltas, strict=True)
        ]
        cls_target = torch.stack([a.cls_target for a in parts])  # (B, A)
        cls_valid = torch.stack([a.cls_valid for a in parts])
        box_pos = torch.stack([a.box_pos for a in parts])
        box_target = torch.stack([a.box_target for a in parts])  # (B, A, 4)
        # At least 1; under DDP the global batch's count, as a share per rank (share_of_total).
        num_cls_pos = share_of_total(cls_target.sum())
        num_box_pos = share_of_total(box_pos.sum())
        box_anchors = anchors.expand_as(deltas)[box_pos]
        sample_weight = targets.get("sample_weight")
        if sample_weight is not None:
            # group reweighting: every anchor of image b (and the objects it holds) weighs
            # w_b; the normalisers stay the unweighted positive counts, so the loss is
            # linear in the weights (w = 2 on one image counts its terms twice)
            per_anchor = sample_weight.float().reshape(-1, 1).expand_as(cls_target)
            cls_loss = (
                self.focal(logits[cls_valid], cls_target[cls_valid], per_anchor[cls_valid])
                / num_cls_pos
            )
            box_loss = (
                self.box_loss(
                    deltas[box_pos], box_target[box_pos], box_anchors, per_anchor[box_pos]
                )
                / num_box_pos
            )
            return {"cls": cls_loss, "box": self.box_weight * box_loss}
        cls_loss = self.focal(logits[cls_valid], cls_target[cls_valid]) / num_cls_pos
        box_loss = self.box_loss(deltas[box_pos], box_target[box_pos], box_anchors) / num_box_pos
        return {"cls": cls_loss, "box": self.box_weight * box_loss}

    @torch.no_grad()
    def predict(
        self,
        outputs: dict[str, Any],
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_det: int = 1000,
        pre_nms_topk: int = 1000,
    ) -> list[dict[str, Tensor]]:
        """Detections per image: ``{"boxes": (M, 4) xyxy clipped to the image, "scores": (M,)}``.

        Sigmoid scores > ``score_thresh``; the ``pre_nms_topk`` best of those (over all levels)
        are decoded and go through NMS at ``nms_iou``; at most ``max_det`` survive, by
        decreasing score. Boxes with no area left after clipping are dropped.
        """
        scores = outputs["cls_logits"][..., 0].float().sigmoid()  # (B, A)
        deltas, anchors = outputs["box_deltas"].float(), outputs["anchors"].float()
        results = []
        for s, d in zip(scores, deltas, strict=True):
            cand = torch.nonzero(s > score_thresh).squeeze(1)
            if len(cand) > pre_nms_topk:
                cand = cand[s[cand].topk(pre_nms_topk).indices]
            boxes = clip_boxes(decode(d[cand], anchors[cand], self.box_std), outputs["image_size"])
            cand_scores = s[cand]
            nonempty = box_area(boxes) > 0
            boxes, cand_scores = boxes[nonempty], cand_scores[nonempty]
            keep = nms(boxes, cand_scores, nms_iou)[:max_det]
            results.append({"boxes": boxes[keep], "scores": cand_scores[keep]})
        return results

    def average(self, outputs_list: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Decision-level fusion: mean foreground probability, mean box deltas.

        The mean probability is returned as a logit, ``log p - log(1 - p)``, both computed by
        logsumexp of log-sigmoids (no saturation: averaging identical outputs gives them back),
        so :meth:`predict` and :meth:`loss` work on the result unchanged.
        """
        if not outputs_list:
            raise ValueError("detection average: no outputs to average")
        first = outputs_list[0]
        if any(o["anchors"].shape != first["anchors"].shape for o in outputs_list):
            raise ValueError(
                "detection average: outputs have different anchors (different image or feature sizes)"
            )
        logits = torch.stack([o["cls_logits"] for o in outputs_list])  # (n, B, A, 1)
        log_n = math.log(len(outputs_list))
        log_p = torch.logsumexp(F.logsigmoid(logits), dim=0) - log_n
        log_not_p = torch.logsumexp(F.logsigmoid(-logits), dim=0) - log_n
        return {
            "cls_logits": log_p - log_not_p,
            "box_deltas": torch.stack([o["box_deltas"] for o in outputs_list]).mean(dim=0),
            "anchors": first["anchors"],
            "image_size": first["image_size"],
        }
