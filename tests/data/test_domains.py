"""`md data synth --domain`: each shifted domain changes what it says it changes, by hand-
checkable formulas on the same scenes as the clean render (md.data.synthetic.domains)."""

from __future__ import annotations

import numpy as np
import pytest

from md.data.synthetic import domains as d
from md.data.synthetic.sample import render_sample
from md.data.synthetic.writer import SynthConfig, iter_samples
from md.errors import ConfigError

SIZE = (64, 64)


def pair(domain: str, index: int) -> tuple:
    clean = render_sample("detection", 3, "train", index, SIZE)
    shifted = d.apply_domain(clean, domain, np.random.default_rng(index))
    return clean, shifted


def f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


# Rounding to uint8 moves every pixel by at most 0.5, so a mean moves by at most 0.5 and a
# standard deviation by at most 0.5 (the rms of the rounding error bounds the change).
ROUND = 0.5 + 1e-9


@pytest.mark.parametrize("index", [0, 1])  # a day and a night frame
def test_fog_lowers_visible_contrast_and_leaves_thermal(index: int) -> None:
    clean, fog = pair("fog", index)
    assert np.array_equal(fog.thermal, clean.thermal)
    v, v2 = f64(clean.visible), f64(fog.visible)
    assert abs(v2.std() - d.FOG_T * v.std()) <= ROUND
    assert abs(v2.mean() - (d.FOG_T * v.mean() + (1 - d.FOG_T) * d.FOG_AIRLIGHT)) <= ROUND
    assert v2.std() < 0.5 * v.std()


@pytest.mark.parametrize("index", [0, 1])
def test_thermal_gain_is_the_stated_affine_map(index: int) -> None:
    clean, gain = pair("thermal-gain", index)
    assert np.array_equal(gain.visible, clean.visible)
    want = np.clip(
        np.rint(128 + d.THERMAL_GAIN * (f64(clean.thermal) - 128) + d.THERMAL_OFFSET), 0, 255
    )
    assert np.array_equal(gain.thermal, want.astype(np.uint8))


@pytest.mark.parametrize("index", [0, 1])
def test_winter_is_colder_in_thermal_and_snowy_below(index: int) -> None:
    clean, winter = pair("winter", index)
    want = np.maximum(f64(clean.thermal) - d.WINTER_COLD, 0)
    assert np.array_equal(winter.thermal, want.astype(np.uint8))
    half = SIZE[1] // 2
    assert np.array_equal(winter.visible[:half], clean.visible[:half])
    assert f64(winter.visible[half:]).mean() > f64(clean.visible[half:]).mean()


@pytest.mark.parametrize("index", [0, 1])
def test_rain_flattens_thermal_and_dims_visible_outside_streaks(index: int) -> None:
    clean, rain = pair("rain", index)
    t, t2 = f64(clean.thermal), f64(rain.thermal)
    assert abs(t2.std() - d.RAIN_THERMAL_CONTRAST * t.std()) <= ROUND
    assert abs(t2.mean() - t.mean()) <= ROUND
    dimmed = np.rint(d.RAIN_DIM * f64(clean.visible))
    changed = (f64(rain.visible) != dimmed).any(axis=2)
    assert changed.mean() < 3 * d.RAIN_STREAK_FRACTION  # only the streak columns differ


def test_shifts_keep_boxes_and_labels() -> None:
    for domain in ("fog", "rain", "winter", "thermal-gain"):
        clean, shifted = pair(domain, 0)
        assert shifted.boxes == clean.boxes and np.array_equal(shifted.labels, clean.labels)


def test_night_only_has_only_night_frames() -> None:
    cfg = SynthConfig("detection", n_train=4, n_test=0, size=SIZE, seed=3, domain="night-only")
    samples = list(iter_samples(cfg, "train"))
    assert [s.group for s in samples] == ["night"] * 4
    assert len({s.id for s in samples}) == 4


def test_unknown_domain_is_refused() -> None:
    with pytest.raises(ConfigError, match="domain 'snow'"):
        SynthConfig("detection", domain="snow").check()
