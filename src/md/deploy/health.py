"""Thermal sensor health, per frame, and which model serves the frame.

A thermal camera fails in a few typical ways; each is a `Health` reason:

- ``missing``: no thermal file for the frame; ``unreadable``: the file does not decode;
- ``nonfinite``: NaN or inf values (float frames: a radiometric stream, a bad conversion);
- ``saturated``: at least `HealthConfig.saturated_fraction` of the pixels at full scale
  (a blinded or overheated sensor);
- ``dead``: a constant frame, standard deviation below `HealthConfig.min_std` grey levels
  of 255 (a disconnected sensor sending zeros, a stuck shutter);
- ``frozen``: the same frame, bit for bit, `HealthConfig.frozen_k` times in a row (a hung
  driver repeating its last buffer). A real sensor's noise never repeats a frame exactly,
  but some cameras repeat each frame a few times by design (9 Hz sensors on 30 Hz links):
  set `frozen_k` above that repeat count.

Reasons are checked in that order; the first that applies is the frame's. `ThermalMonitor`
keeps the state the frozen check needs (frames come in stream order).

`serve` decides who predicts a frame: the primary model when the frame is healthy (or the
primary sees no thermal), else the visible-only backup when there is one, else nobody (the
frame is reported, not predicted on garbage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from md.errors import ConfigError

REASONS = ("ok", "missing", "unreadable", "nonfinite", "saturated", "dead", "frozen")


@dataclass(frozen=True)
class HealthConfig:
    min_std: float = 0.5  # grey levels (of 255): below this a frame is dead / constant
    saturated_fraction: float = 0.5  # share of pixels at full scale that makes it saturated
    frozen_k: int = 3  # identical consecutive frames that make a frozen stream

    def __post_init__(self) -> None:
        if self.frozen_k < 2:
            raise ConfigError(
                f"frozen_k must be >= 2 (identical frames in a row), got {self.frozen_k}"
            )
        if not 0 < self.saturated_fraction <= 1:
            raise ConfigError(
                f"saturated_fraction must be in (0, 1], got {self.saturated_fraction}"
            )
        if self.min_std < 0:
            raise ConfigError(f"min_std must be >= 0 grey levels, got {self.min_std}")


@dataclass(frozen=True)
class Health:
    reason: str  # one of REASONS
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


OK = Health("ok")


def full_scale(frame: np.ndarray) -> float:
    """The value of a saturated pixel: 255 (uint8), 65535 (uint16), 1.0 (float in [0, 1])."""
    if np.issubdtype(frame.dtype, np.integer):
        return float(np.iinfo(frame.dtype).max)
    return 1.0


def frame_health(frame: np.ndarray, cfg: HealthConfig = HealthConfig()) -> Health:
    """The stateless checks (all but ``frozen``) of one thermal frame, any shape and dtype."""
    a = np.asarray(frame)
    if a.size == 0:
        return Health("unreadable", "empty frame")
    scale = full_scale(a)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():
            return Health("nonfinite", f"{int(bad.sum())} of {a.size} pixels NaN or inf")
    at_top = float(np.count_nonzero(a >= scale)) / a.size
    if at_top >= cfg.saturated_fraction:
        return Health("saturated", f"{100 * at_top:.1f} % of pixels at full scale")
    std = float(np.asarray(a, dtype=np.float64).std()) * 255.0 / scale
    if std < cfg.min_std:
        return Health("dead", f"std {std:.3g} grey levels < {cfg.min_std}")
    return OK


class ThermalMonitor:
    """Health of a thermal stream, frame after frame (keeps the frozen-stream state)."""

    def __init__(self, cfg: HealthConfig = HealthConfig()) -> None:
        self.cfg = cfg
        self._last: np.ndarray | None = None
        self._run = 0  # identical frames in a row ending with the last one

    def check(self, frame: np.ndarray | None, error: str | None = None) -> Health:
        """`frame`: the decoded thermal frame, or None with `error` = ``missing: ...`` /
        ``unreadable: ...`` when there is none. A gap (missing / unreadable) breaks a run."""
        if frame is None:
            self._last, self._run = None, 0
            reason, _, detail = (error or "missing").partition(": ")
            return Health(reason if reason in REASONS else "unreadable", detail)
        a = np.asarray(frame)
        same = (
            self._last is not None
            and self._last.shape == a.shape
            and self._last.dtype == a.dtype
            and np.array_equal(self._last, a, equal_nan=np.issubdtype(a.dtype, np.floating))
        )
        self._run = self._run + 1 if same else 1
        self._last = a.copy()
        health = frame_health(a, self.cfg)
        if health.ok and self._run >= self.cfg.frozen_k:
            return Health("frozen", f"same frame {self._run} times in a row")
        return health


def serve(health: Health, primary_uses_thermal: bool, has_fallback: bool) -> str | None:
    """``"primary"``, ``"fallback"`` or None (not predicted) for a frame of this health."""
    if health.ok or not primary_uses_thermal:
        return "primary"
    return "fallback" if has_fallback else None
