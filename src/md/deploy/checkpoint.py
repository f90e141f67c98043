"""`CheckpointPredictor`: a `.pt` checkpoint (any student kind, the teacher, the decision
baseline) behind the `Predictor` interface.

It takes camera frames, visible ``uint8 (N, 3, H, W)`` and thermal ``uint8 (N, 1, h, w)``,
and feeds the model exactly what `md evaluate model` feeds it, so that on the frames of a
dataset both give the same detections / class maps:

- images become float32 in [0, 1] by ``/ 255`` (what `md.data` does when it reads a PNG);
- thermal at full size (h, w) = (H, W) goes through `md.data.transforms.reduce_thermal` at
  the model's thermal factor (bilinear down, then bilinear up, as in training and in
  `md evaluate model`): bitwise the same input;
- thermal at the camera's low resolution (H // d, W // d), d = sqrt(factor), is only
  up-sampled, with the same bilinear interpolation; it then differs from the full-size
  path by the 8-bit rounding of the low-resolution frame (at most half a grey level);
- a visible-only student (``--thermal-factor none``) ignores the thermal input.

Detection uses the score threshold of `md evaluate model` (0.01), so a KAIST results file
written from it scores the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from md.data.transforms import reduce_thermal
from md.deploy.runtime import ModelInfo
from md.errors import MdError
from md.eval.model_eval import THERMAL_NONE, default_thermal_factor, model_inputs
from md.models import load_model, num_classes
from md.models.checkpoint import file_sha256
from md.train.recipe import resolve_device

EVAL_SCORE_THRESH = 0.01  # what md evaluate model keeps before NMS (md.eval.model_eval)


def low_thermal_size(image_size: tuple[int, int], thermal_factor: int) -> tuple[int, int]:
    """(h, w) of the low-resolution thermal frame for an (H, W) image, as `reduce_thermal`
    computes it: (max(1, H // d), max(1, W // d)) with d = sqrt(factor)."""
    d = math.isqrt(thermal_factor)
    return max(1, image_size[0] // d), max(1, image_size[1] // d)


def thermal_sizes(info: ModelInfo, image_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Thermal sizes a predictor accepts beside an (H, W) visible frame: the camera's low
    resolution first, then full size; () for a model without thermal input."""
    if not info.uses_thermal:
        return ()
    image = (int(image_size[0]), int(image_size[1]))
    fixed, low_fixed = info.image_size, info.thermal_size
    if fixed is not None and low_fixed is not None and (int(fixed[0]), int(fixed[1])) == image:
        return ((int(low_fixed[0]), int(low_fixed[1])),)
    low = low_thermal_size(image, info.thermal_factor)
    return (low,) if low == image else (low, image)


class CheckpointPredictor:
    """A checkpoint as a `Predictor`; see the module docstring for the inputs it builds."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        score_thresh: float = EVAL_SCORE_THRESH,
        thermal_factor: int | None = None,
    ) -> None:
        self.path = Path(path)
        model, ckpt = load_model(self.path)
        self.kind: str = ckpt["model_kind"]
        self.task: str = ckpt["task"]
        tf = default_thermal_factor(ckpt) if thermal_factor is None else thermal_factor
        if self.kind == "student" and getattr(model, "in_channels", 6) == 3:
            tf = THERMAL_NONE
        if tf == THERMAL_NONE and self.kind != "student":
            raise MdError(
                f"{self.path}: a {self.kind} model needs thermal; it cannot run visible-only"
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        head = getattr(model, "head", None)
        # the decision-level baseline has a head per stream; both are the same kind
        self.head: Any = head if head is not None else model.visible.head  # type: ignore[union-attr]
        args = ckpt.get("model_args", {})
        self.info = ModelInfo(
            task=self.task,
            num_classes=int(args.get("num_classes", num_classes(self.task))),
            image_size=None,
            thermal_size=None,
            thermal_factor=tf,
            score_thresh=score_thresh if self.task == "detection" else 0.0,
            format="checkpoint",
            source=str(self.path),
            sha256=file_sha256(self.path),
            meta={
                "model_kind": self.kind,
                "in_channels": args.get("in_channels"),
                "head_input": args.get("head_input"),
                "levels": args.get("levels"),
                "lineage": ckpt.get("lineage", {}),
                "normalisation": "imagenet mean/std inside the model; inputs / 255",
            },
        )

    # -- inputs ------------------------------------------------------------------------------

    def model_thermal(self, thermal: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
        """Thermal uint8 (N, 1, h, w) -> float32 (N, 1, H, W) as the model was trained on it."""
        tf = self.info.thermal_factor
        t = _to_float(thermal, "thermal", channels=1)
        size = tuple(t.shape[-2:])
        allowed = thermal_sizes(self.info, image_size)
        if size == tuple(image_size):
            return reduce_thermal(t, tf) if tf != 1 else t
        if size in allowed:
            return F.interpolate(t, size=image_size, mode="bilinear", align_corners=False)
        raise MdError(
            f"thermal frame is {size[1]}x{size[0]} but {self.path.name} (thermal factor {tf}) "
            f"takes {' or '.join(f'{w}x{h}' for h, w in allowed)} beside a "
            f"{image_size[1]}x{image_size[0]} visible frame; resize the thermal frames"
        )

    def inputs(self, visible: np.ndarray, thermal: np.ndarray | None) -> tuple[torch.Tensor, ...]:
        """The model's forward arguments for one batch of camera frames."""
        v = _to_float(visible, "visible", channels=3)
        batch: dict[str, Any] = {"visible": v, "thermal": None}
        if self.info.uses_thermal:
            if thermal is None:
                raise MdError(f"{self.path.name} uses thermal but no thermal frames were given")
            if len(thermal) != len(visible):
                raise MdError(f"{len(thermal)} thermal frames for {len(visible)} visible frames")
            batch["thermal"] = self.model_thermal(thermal, (v.shape[-2], v.shape[-1]))
        tf = 1 if self.info.uses_thermal else THERMAL_NONE
        return tuple(a.to(self.device) for a in model_inputs(self.model, self.kind, batch, tf))

    # -- the Predictor interface ---------------------------------------------------------------

    def predict(
        self, visible: np.ndarray, thermal: np.ndarray | None
    ) -> list[dict[str, np.ndarray]] | np.ndarray:
        args = self.inputs(visible, thermal)
        with torch.inference_mode():
            pred = self.model(*args)["pred"]
            if self.task == "detection":
                return [
                    {
                        "boxes": p["boxes"].cpu().numpy().astype(np.float32),
                        "scores": p["scores"].cpu().numpy().astype(np.float32),
                    }
                    for p in self.head.predict(pred, score_thresh=self.info.score_thresh)
                ]
            return self.head.predict(pred).cpu().numpy().astype(np.uint8)


def _to_float(frames: np.ndarray, role: str, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1], divided as `md.data` divides (float32 / 255)."""
    a = np.asarray(frames)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] != channels:
        raise MdError(
            f"{role} frames must be uint8 (N, {channels}, H, W), got {a.dtype} {tuple(a.shape)}; "
            "convert them to 8-bit first"
        )
    # C order: a transposed (H, W, C) camera buffer would otherwise give a channels-last
    # tensor, whose convolutions round differently from md evaluate model's.
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True)).div_(255.0)
