"""Thermal health on hand-built frames, and the serving decision."""

from __future__ import annotations

import numpy as np
import pytest

from md.deploy.health import Health, HealthConfig, ThermalMonitor, frame_health, serve
from md.errors import ConfigError


def noisy(seed: int = 0, shape: tuple[int, ...] = (1, 20, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 230, shape).astype(np.uint8)


def two_level(low: int, step: int) -> np.ndarray:
    """Half the pixels at `low`, half at `low + step`: std exactly step / 2."""
    a = np.full((1, 10, 10), low, np.uint8)
    a[:, :5] += step
    return a


def test_noisy_frame_is_ok() -> None:
    assert frame_health(noisy()).ok


@pytest.mark.parametrize("value", [0, 1, 128, 254])
def test_constant_frame_is_dead(value: int) -> None:
    h = frame_health(np.full((1, 8, 8), value, np.uint8))
    assert h.reason == "dead" and not h.ok


def test_dead_threshold_is_the_std_in_grey_levels() -> None:
    cfg = HealthConfig(min_std=1.0)
    assert frame_health(two_level(100, 3), cfg).ok  # std 1.5
    assert frame_health(two_level(100, 1), cfg).reason == "dead"  # std 0.5
    # the same frames as uint16 (x257) or float (/255) have the same std in grey levels
    for scaled in (lambda a: a.astype(np.uint16) * 257, lambda a: a.astype(np.float32) / 255):
        assert frame_health(scaled(two_level(100, 1)), cfg).reason == "dead"
        assert frame_health(scaled(two_level(100, 3)), cfg).ok


def test_saturated_by_fraction_at_full_scale() -> None:
    a = noisy()
    flat = a.reshape(-1)
    flat[: int(0.6 * flat.size)] = 255
    assert frame_health(a).reason == "saturated"
    b = noisy()
    b.reshape(-1)[: int(0.4 * b.size)] = 255
    assert frame_health(b).ok
    assert frame_health(b, HealthConfig(saturated_fraction=0.3)).reason == "saturated"
    assert frame_health(np.ones((1, 4, 4), np.float32)).reason == "saturated"
    assert frame_health(np.full((1, 4, 4), 65535, np.uint16)).reason == "saturated"
    # 255 is not full scale for a 16-bit frame
    assert frame_health(noisy().astype(np.uint16) * 200 + 255).ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_float_frame(bad: float) -> None:
    a = noisy().astype(np.float32) / 255
    a[0, 3, 4] = bad
    h = frame_health(a)
    assert h.reason == "nonfinite" and "1 of 480" in h.detail


def test_frozen_after_k_identical_frames() -> None:
    mon = ThermalMonitor(HealthConfig(frozen_k=3))
    a, b = noisy(1), noisy(2)
    reasons = [mon.check(f).reason for f in (a, a.copy(), a.copy(), a.copy(), b, a, a)]
    assert reasons == ["ok", "ok", "frozen", "frozen", "ok", "ok", "ok"]


def test_a_gap_breaks_a_frozen_run() -> None:
    mon = ThermalMonitor(HealthConfig(frozen_k=2))
    a = noisy(1)
    got = [mon.check(a).reason, mon.check(None, "missing: t/0001.png").reason]
    got += [mon.check(a).reason, mon.check(a).reason]
    assert got == ["ok", "missing", "ok", "frozen"]


def test_missing_and_unreadable_records() -> None:
    mon = ThermalMonitor()
    assert mon.check(None, "missing: t/0001.png") == Health("missing", "t/0001.png")
    h = mon.check(None, "unreadable: t/0002.png: truncated")
    assert h.reason == "unreadable" and "truncated" in h.detail


def test_dead_frames_repeated_stay_dead() -> None:
    mon = ThermalMonitor(HealthConfig(frozen_k=2))
    zeros = np.zeros((1, 4, 4), np.uint8)
    assert [mon.check(zeros).reason for _ in range(3)] == ["dead"] * 3


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="frozen_k"):
        HealthConfig(frozen_k=1)
    with pytest.raises(ConfigError, match="saturated_fraction"):
        HealthConfig(saturated_fraction=0)


@pytest.mark.parametrize(
    ("reason", "uses_thermal", "fallback", "served"),
    [
        ("ok", True, False, "primary"),
        ("ok", True, True, "primary"),
        ("dead", True, True, "fallback"),
        ("missing", True, True, "fallback"),
        ("frozen", True, False, None),
        ("dead", False, False, "primary"),  # a visible-only primary does not need thermal
    ],
)
def test_serve(reason: str, uses_thermal: bool, fallback: bool, served: str | None) -> None:
    assert serve(Health(reason), uses_thermal, fallback) == served
