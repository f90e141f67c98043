"""Sensors: the visible CMOS camera and the thermal microbolometer with its automatic gain
control, from the canvas to 8-bit images."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from md.data.synthetic.camera import Conditions
from md.data.synthetic.canvas import Canvas
from md.data.synthetic.constants import Array
from md.data.synthetic.noise import gaussian_blur


def render_visible(canvas: Canvas, cond: Conditions, rng: np.random.Generator) -> NDArray[np.uint8]:
    """A CMOS camera: auto exposure capped by a maximum gain, shot + read noise, glare
    around saturated lights, vignetting, gamma 2.2, 8 bits."""
    h, w = canvas.t_app.shape
    radiance = canvas.albedo * canvas.light + canvas.emission
    radiance = gaussian_blur(radiance, w / 900)  # lens
    exposure = min(0.2 / max(float(np.clip(radiance, 0, 1).mean()), 1e-6), 8.0)
    gain = max(1.0, exposure / 1.6)  # exposure time tops out at 1.6; beyond, analog gain
    raw = radiance * exposure
    glare = np.clip(raw - 1.0, 0, 40)
    if glare.any():  # veiling glare and halo around saturated lights
        raw = raw + 0.08 * gaussian_blur(glare, w / 35) + 0.25 * gaussian_blur(glare, w / 160)
    ys, xs = np.mgrid[0:h, 0:w]
    r2 = ((xs - w / 2) ** 2 + (ys - h / 2) ** 2) / (w * w / 4)
    raw = raw * (1 - 0.18 * r2)[..., None]
    clipped = np.clip(raw, 0, 1)
    sigma = np.sqrt(clipped * gain / 1500.0 + (0.0015 * gain) ** 2)
    raw = raw + sigma * rng.standard_normal(raw.shape)
    srgb = np.clip(raw, 0, 1) ** (1 / 2.2)
    return np.round(srgb * 255).astype(np.uint8)


def render_thermal(canvas: Canvas, cond: Conditions, rng: np.random.Generator) -> NDArray[np.uint8]:
    """An uncooled microbolometer: optics blur (thermal images are softer than visible),
    temporal noise (NETD ~0.12 K), column fixed-pattern noise, then automatic gain control."""
    h, w = canvas.t_app.shape
    t = gaussian_blur(canvas.t_app, w / 220)
    t = t + rng.normal(0, 0.12, (h, w)) + rng.normal(0, 0.04, (1, w))
    grey = automatic_gain_control(t)
    return np.round(grey * 255).astype(np.uint8)


def automatic_gain_control(t: Array, plateau: float = 0.01, linear: float = 0.5) -> Array:
    """Map temperatures to [0, 1] like a FLIR core: plateau histogram equalisation mixed
    with a linear stretch.

    Equalisation spends grey levels where the histogram has mass, but each bin's count is
    capped at `plateau` of the pixels so that large uniform areas (sky, road) cannot take
    the whole range; `linear` of the output is a plain 0.2-99.9 percentile stretch, which
    keeps temperature differences across sparsely populated ranges (people at night).
    """
    lo, hi = np.percentile(t, [0.2, 99.9])
    hi = max(float(hi), float(lo) + 4.0)  # a uniform scene must not amplify noise unboundedly
    hist, edges = np.histogram(t, bins=256, range=(float(lo), hi))
    hist = np.minimum(hist, plateau * t.size)
    cdf = np.concatenate([[0.0], np.cumsum(hist)]) / max(float(hist.sum()), 1.0)
    equalised = np.interp(t, edges, cdf)
    stretched = np.clip((t - lo) / (hi - lo), 0, 1)
    return np.asarray(np.clip(linear * stretched + (1 - linear) * equalised, 0, 1))
