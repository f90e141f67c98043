"""Shifted domains for drift tests (`md data synth --domain`): image-space changes of the
rendered frames, so the same scenes (same seed) can be compared clean and shifted.

Each shift changes pixels only (boxes and labels stay valid) and states what it changes,
so tests can check it by hand (docs/synthetic.md, "Shifted domains"):

- ``fog``: visible ``v' = t v + (1 - t) A`` with transmission ``t = FOG_T`` and airlight
  ``A = FOG_AIRLIGHT`` (uniform haze: contrast x t, mean pulled to A); thermal unchanged
  (long-wave infrared passes light fog).
- ``rain``: visible dimmed x ``RAIN_DIM`` with sparse bright streaks; thermal contrast x
  ``RAIN_THERMAL_CONTRAST`` about the frame mean (wet surfaces even out temperatures).
- ``winter``: thermal ``- WINTER_COLD`` counts (cold scene, clipped at 0); the visible rows
  below the middle blended half-way to snow white (``WINTER_SNOW``).
- ``thermal-gain``: thermal ``128 + THERMAL_GAIN (t - 128) + THERMAL_OFFSET`` (a detector
  gain/offset change, clipped to 0..255); visible unchanged.
- ``night-only``: only night frames (the odd sample indices); pixels unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, cast

import numpy as np

from md.data.synthetic.sample import SyntheticSample

Domain = Literal["none", "fog", "rain", "winter", "thermal-gain", "night-only"]
DOMAINS: tuple[str, ...] = ("none", "fog", "rain", "winter", "thermal-gain", "night-only")

FOG_T = 0.4
FOG_AIRLIGHT = 204.0
RAIN_DIM = 0.75
RAIN_STREAK_FRACTION = 0.02  # share of columns carrying a streak
RAIN_THERMAL_CONTRAST = 0.6
WINTER_COLD = 40
WINTER_SNOW = 235.0
THERMAL_GAIN = 1.6
THERMAL_OFFSET = 10.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def domain_index(domain: str, i: int) -> int:
    """The render index of the i-th sample of a split (night-only takes the odd ones)."""
    return 2 * i + 1 if domain == "night-only" else i


def apply_domain(sample: SyntheticSample, domain: str, rng: np.random.Generator) -> SyntheticSample:
    """`sample` as seen in `domain` (a pure function of the sample and `rng`'s state)."""
    if domain in ("none", "night-only"):
        return sample
    v = sample.visible.astype(np.float64)
    t = sample.thermal.astype(np.float64)
    if domain == "fog":
        v = FOG_T * v + (1.0 - FOG_T) * FOG_AIRLIGHT
    elif domain == "rain":
        v = RAIN_DIM * v
        h, w = t.shape
        cols = rng.random(w) < RAIN_STREAK_FRACTION
        for c in np.flatnonzero(cols):
            y0 = int(rng.integers(0, max(1, h // 2)))
            y1 = min(h, y0 + int(rng.integers(h // 4, h // 2 + 1)))
            v[y0:y1, c, :] = 0.5 * v[y0:y1, c, :] + 0.5 * 220.0
        t = t.mean() + RAIN_THERMAL_CONTRAST * (t - t.mean())
    elif domain == "winter":
        t = t - WINTER_COLD
        half = v.shape[0] // 2
        v[half:] = 0.5 * v[half:] + 0.5 * WINTER_SNOW
    elif domain == "thermal-gain":
        t = 128.0 + THERMAL_GAIN * (t - 128.0) + THERMAL_OFFSET
    else:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    return dataclasses.replace(sample, visible=_u8(v), thermal=_u8(t))


def check_domain(domain: str) -> Domain:
    from md.errors import ConfigError

    if domain not in DOMAINS:
        raise ConfigError(f"domain {domain!r}: use one of {', '.join(DOMAINS)}")
    return cast(Domain, domain)
