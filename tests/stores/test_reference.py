"""Reference statistics and drift thresholds (md.stores.reference): the threshold's
false-alarm rate holds on simulated in-distribution sets, and shifted sets score higher."""

from __future__ import annotations

import math

import numpy as np

from md.stores.reference import frame_histogram, set_threshold, tv_distance


def test_histogram_and_tv_distance_by_hand() -> None:
    img = np.array([[0.0, 0.0], [0.99, 1.0]])
    h = frame_histogram(img, bins=4)
    assert h.tolist() == [0.5, 0.0, 0.0, 0.5]
    assert tv_distance(h, np.array([0.5, 0.5, 0.0, 0.0])) == 0.5
    assert tv_distance(h, h) == 0.0


def test_threshold_false_alarm_rate_matches_alpha() -> None:
    # Per-frame scores: skewed (gamma) like TV distances. 4000 trials, each a held-out set
    # of m frames (the calibration) and an incoming in-distribution set of n frames.
    rng = np.random.default_rng(0)
    alpha, n, m, trials = 0.05, 32, 64, 4000
    alarms = 0
    for _ in range(trials):
        held = rng.gamma(4.0, 0.05, m)
        new = rng.gamma(4.0, 0.05, n)
        alarms += new.mean() > set_threshold(held.mean(), held.std(ddof=1), n, alpha, m)
    rate = alarms / trials
    # Binomial standard error at alpha over 4000 trials ~ 0.0034; allow 4 of them plus the
    # normal approximation's error at these sizes (sd estimated from m frames: ~0.01).
    assert abs(rate - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / trials) + 0.01, rate


def test_threshold_detects_a_shift_of_the_mean() -> None:
    rng = np.random.default_rng(1)
    held = rng.gamma(4.0, 0.05, 64)
    thr = set_threshold(held.mean(), held.std(ddof=1), 32, 0.05, 64)
    assert rng.gamma(4.0, 0.05, 32).mean() + 0.1 > thr  # a 0.1 shift (half the mean) alarms
