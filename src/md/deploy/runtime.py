"""The `Predictor` interface: what a deployed model takes and gives.

A predictor takes what a camera gives: visible ``uint8 (N, 3, H, W)`` and thermal ``uint8
(N, 1, h, w)`` at the thermal camera's own (low) resolution, or ``None`` for a model that
sees no thermal. It gives, per frame, detections ``{"boxes": float32 (M, 4) xyxy pixels,
"scores": float32 (M,)}`` after NMS, or for segmentation a ``uint8 (N, H, W)`` class map.
A checkpoint and the file `md export` writes from it must give the same outputs (up to the
float tolerance documented with the exporter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to feed a predictor and to read its outputs."""

    task: str  # "detection" | "segmentation"
    num_classes: int
    image_size: tuple[int, int] | None  # (H, W) the model is fixed to; None: any size
    thermal_size: tuple[int, int] | None  # (h, w) expected for image_size; None: no thermal
    thermal_factor: int  # pixel factor 1/4/16/64; 0: visible-only (no thermal input)
    score_thresh: float  # detection score threshold applied inside (0 for segmentation)
    format: str  # "checkpoint" | "onnx" | "onnx-int8" | "torchscript"
    source: str  # the file it was loaded from
    sha256: str  # of that file
    meta: dict[str, Any] = field(default_factory=dict)  # lineage, model kind, normalisation

    @property
    def uses_thermal(self) -> bool:
        return self.thermal_factor != 0


class Predictor(Protocol):
    info: ModelInfo

    def predict(
        self, visible: np.ndarray, thermal: np.ndarray | None
    ) -> list[dict[str, np.ndarray]] | np.ndarray: ...
