"""The canvas: per-pixel surface properties, composited far to near."""

from __future__ import annotations

import numpy as np

from md.data.synthetic.constants import Array


class Canvas:
    """Per-pixel surface properties, composited far to near.

    `albedo` (H, W, 3) and `light` (H, W, 3) give the reflected visible radiance; `emission`
    (H, W, 3) is self-emitted visible light; `t_app` (H, W) is the brightness temperature
    in °C; `labels` holds MFNet classes and `owner` the id of the object that won each pixel.
    """

    def __init__(self, height: int, width: int) -> None:
        self.albedo = np.zeros((height, width, 3))
        self.light = np.zeros((height, width, 3))
        self.emission = np.zeros((height, width, 3))
        self.t_app = np.zeros((height, width))
        self.labels = np.zeros((height, width), np.uint8)
        self.owner = np.zeros((height, width), np.int32)

    def paint(
        self,
        window: tuple[slice, slice],
        cover: Array,
        albedo: Array,
        light: Array,
        t_app: Array | float,
        emission: Array | None = None,
        label: int = 0,
        owner: int = 0,
        opacity: float = 1.0,
    ) -> None:
        """Alpha-composite one surface over `window`; `cover` in [0, 1] is its coverage.

        Pixels at least half covered take the surface's `label` and `owner`, also when its
        `opacity` is low (annotators label a bicycle wheel as bike, spokes and all).
        """
        won = cover >= 0.5
        cover = cover * opacity
        a = cover[..., None]
        for name, value in (("albedo", albedo), ("light", light)):
            dst = getattr(self, name)
            dst[window] = dst[window] * (1 - a) + a * value
        em = np.zeros(3) if emission is None else emission
        self.emission[window] = self.emission[window] * (1 - a) + a * em
        self.t_app[window] = self.t_app[window] * (1 - cover) + cover * t_app
        self.labels[window][won] = label
        self.owner[window][won] = owner
