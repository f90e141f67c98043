"""Drawing objects: anti-aliased rasterisation of billboards onto the canvas."""

from __future__ import annotations

import math

import numpy as np

from md.data.synthetic.canvas import Canvas
from md.data.synthetic.constants import Array
from md.data.synthetic.lights import _upright_light, ground_shade
from md.data.synthetic.scene import Scene
from md.data.synthetic.things import Thing

SUPERSAMPLE = 3  # per side: 9 samples per pixel for anti-aliased silhouettes


def draw_thing(
    canvas: Canvas, scene: Scene, thing: Thing
) -> tuple[tuple[slice, slice], Array] | None:
    """Rasterise `thing` (anti-aliased) and composite it; returns (window, coverage)."""
    cam = scene.cam
    s = cam.scale(thing.z)
    xc, yf = cam.center_x + s * thing.x, cam.foot_row(thing.z)
    h, w = canvas.t_app.shape
    x0, x1 = (
        max(0, math.floor(xc - thing.half_width * s)),
        min(w, math.ceil(xc + thing.half_width * s)),
    )
    y0, y1 = max(0, math.floor(yf - thing.height * s)), min(h, math.ceil(yf))
    if x1 <= x0 or y1 <= y0:
        return None
    k = SUPERSAMPLE
    sx = x0 + (np.arange((x1 - x0) * k) + 0.5) / k
    sy = y0 + (np.arange((y1 - y0) * k) + 0.5) / k
    u, v = (sx[None, :] - xc) / s, (yf - sy[:, None]) / s
    window = (slice(y0, y1), slice(x0, x1))
    light = _thing_light(scene, thing, (np.arange(x0, x1, dtype=np.float64) + 0.5 - xc) / s)
    union_cover = np.zeros((y1 - y0, x1 - x0))
    for part in thing.parts:
        inside = part.shape(u, v).astype(np.float64)
        cover = inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
        if not cover.any():
            continue
        canvas.paint(
            window,
            cover,
            np.array(part.albedo),
            light,
            part.t_app,
            np.array(part.emission),
            part.label,
            thing.ident,
            part.opacity,
        )
        union_cover = np.maximum(union_cover, cover)
    return window, union_cover


def _thing_light(scene: Scene, thing: Thing, u: Array) -> Array:
    """Illuminance (1, W', 3) across an object: rounded bodies darken towards their sides."""
    cond = scene.cond
    if cond.night:
        e = cond.ambient * np.array(cond.ambient_rgb) + scene.lights.on_upright(thing.x, thing.z)
    else:
        foot = ground_shade(cond, scene.street, [], np.array([thing.x]), np.array([thing.z]))
        e = _upright_light(cond, np.array([0.0, 0.0, -1.0]), float(foot[0]) * 0.8 + 0.2)
    rounding = 1 - 0.35 * np.clip(u / max(thing.half_width, 1e-3), -1, 1) ** 2
    return (rounding[:, None] * e)[None, :, :]
