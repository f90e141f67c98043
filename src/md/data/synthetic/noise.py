"""Random streams, value noise and filters, and the grey-body radiometry every surface uses."""

from __future__ import annotations

import math

import numpy as np

from md.data.synthetic.constants import GENERATOR_VERSION, KELVIN, SPLITS, Array


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample: PCG64 seeded from (version, seed, split, index).

    Seeding per sample (not one stream for the whole set) keeps sample i identical whether
    8 or 8,000 samples are generated, and lets samples be made in any order.
    """
    key = [GENERATOR_VERSION, seed, SPLITS.index(split), index]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


class ValueNoise:
    """Tileable value noise on a plane, sampled bilinearly at any real coordinates.

    Textures are looked up in *world* units (metres on the ground or a facade), so they
    shrink with distance exactly like the surfaces they decorate.
    """

    def __init__(self, rng: np.random.Generator, cells: int = 64) -> None:
        self.grid = rng.standard_normal((cells, cells))
        self.cells = cells

    def __call__(self, u: Array, v: Array, scale: float, octaves: int = 1) -> Array:
        """Noise of unit-ish variance at (u, v); `scale` = world units per noise cell."""
        total = np.zeros(np.broadcast(u, v).shape)
        amplitude, norm = 1.0, 0.0
        for octave in range(octaves):
            offset = 17.3 * octave  # decorrelate octaves that share one grid
            total += amplitude * self._sample(u / scale + offset, v / scale - offset)
            norm += amplitude**2
            amplitude, scale = amplitude * 0.5, scale * 0.5
        return total / math.sqrt(norm)

    def _sample(self, gu: Array, gv: Array) -> Array:
        i0, j0 = np.floor(gv), np.floor(gu)
        fy, fx = gv - i0, gu - j0
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no grid creases
        i0, j0 = i0.astype(np.int64) % self.cells, j0.astype(np.int64) % self.cells
        i1, j1 = (i0 + 1) % self.cells, (j0 + 1) % self.cells
        g = self.grid
        top = g[i0, j0] * (1 - fx) + g[i0, j1] * fx
        bottom = g[i1, j0] * (1 - fx) + g[i1, j1] * fx
        return top * (1 - fy) + bottom * fy


def gaussian_blur(image: Array, sigma: float) -> Array:
    """Separable Gaussian blur over the first two axes (edge-replicated borders)."""
    if sigma < 0.25:
        return image
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    rest = [(0, 0)] * (image.ndim - 2)
    h, w = image.shape[:2]
    padded = np.pad(image, [(radius, radius), (0, 0), *rest], mode="edge")
    rows = sum(wt * padded[k : k + h] for k, wt in enumerate(taps))  # loop over taps, not pixels
    padded = np.pad(rows, [(0, 0), (radius, radius), *rest], mode="edge")
    return np.asarray(sum(wt * padded[:, k : k + w] for k, wt in enumerate(taps)))


def brightness_temperature(
    t_surface: Array | float, emissivity: Array | float, t_reflected: Array | float
) -> Array:
    """Temperature (°C) a thermal camera reads from a grey body (Stefan-Boltzmann mix).

    A surface of emissivity eps emits eps*sigma*T^4 and reflects (1 - eps) of what it sees;
    low-emissivity surfaces (bare metal, glass, water) thus mirror the cold sky.
    """
    t, r = np.asarray(t_surface) + KELVIN, np.asarray(t_reflected) + KELVIN
    eps = np.asarray(emissivity)
    return np.asarray((eps * t**4 + (1 - eps) * r**4) ** 0.25 - KELVIN, dtype=np.float64)
