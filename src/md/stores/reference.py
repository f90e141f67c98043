"""Reference statistics of a store: what in-distribution inputs and teacher features look like.

`md cache-teacher` records them in the store's ``reference/`` group (a few kB) so that
`md drift` can score unlabeled incoming frames against the data the teacher was cached on:

- per modality (``visible`` as luma 0.299 R + 0.587 G + 0.114 B, ``thermal``) the intensity
  histogram of the reference frames, ``BINS`` equal bins over [0, 1]
  (``reference/hist_visible`` [bin_visible], ``reference/hist_thermal`` [bin_thermal]);
- per stored level L the per-channel mean and standard deviation of the stored features
  over samples and positions (``feature_mean_L``, ``feature_std_L`` [channel_L]) and of the
  per-frame spatial means (``frame_mean_mean_L``, ``frame_mean_std_L`` [channel_L]);
- the per-frame scores of held-out in-distribution frames (samples ``i % 3 == 2``, never
  used for the statistics above), one array per test (``heldout_visible``,
  ``heldout_thermal``, ``heldout_feature_L`` [heldout]): the calibration of the threshold.

Per-frame scores: an input frame's score is the total-variation distance between its
histogram and the reference histogram (0 = same, 1 = disjoint); a feature frame's score is
the mean over channels of the squared z-score of its spatial channel means against the
reference frame means. A set of n frames scores the mean of its frames' scores; its
threshold at false-alarm rate a is ``mu + z(1 - a) * sd * sqrt(1/n + 1/m)`` with (mu, sd) the
mean and standard deviation of the m held-out frames' scores (a one-sided two-sample test
under the central limit theorem).

Every array has its own dimension names (``bin_visible``, ``channel_C3``, ``heldout``) so
xarray opens the group; the group attributes say how the arrays were made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import zarr

from md.errors import StoreError

REFERENCE_GROUP = "reference"
REFERENCE_VERSION = 1
REFERENCE_SINCE = "0.1.0"  # the md version that started writing reference statistics
BINS = 32
MODALITIES = ("visible", "thermal")
MAX_REFERENCE_FRAMES = 1024  # frames the statistics are computed from (evenly spaced)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def is_heldout(index: int) -> bool:
    """Held-out calibration frames: every third sample (both day and night of the
    alternating synthetic sets, any fixed order of a real split)."""
    return index % 3 == 2


def luma(visible: np.ndarray) -> np.ndarray:
    """[..., 3, H, W] RGB in [0, 1] -> [..., H, W] luma."""
    return np.tensordot(LUMA, np.asarray(visible, dtype=np.float64), axes=([0], [-3]))


def frame_histogram(image: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Normalised intensity histogram [bins] of one frame in [0, 1] (values clipped)."""
    x = np.clip(np.asarray(image, dtype=np.float64).ravel(), 0.0, 1.0)
    idx = np.minimum((x * bins).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    return counts / max(1.0, counts.sum())


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance of two normalised histograms, in [0, 1]."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def frame_channel_means(features: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, C] spatial means (float64)."""
    return np.asarray(features, dtype=np.float64).mean(axis=(2, 3))


def feature_score(frame_means: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, C] frame means -> [N] mean squared z-score against the reference frame means."""
    z = (np.asarray(frame_means, dtype=np.float64) - mean) / np.maximum(std, 1e-6)
    return (z**2).mean(axis=1)


def set_threshold(mu: float, sd: float, n: int, alpha: float, heldout: int) -> float:
    """Threshold on the mean score of n frames with false-alarm rate alpha: the difference
    of the set's mean and the held-out mean (of `heldout` frames) has standard deviation
    ``sd * sqrt(1/n + 1/heldout)`` under no drift (central limit theorem)."""
    spread = sd * math.sqrt(1.0 / max(1, n) + 1.0 / max(1, heldout))
    return mu + NormalDist().inv_cdf(1.0 - alpha) * spread


@dataclass
class Reference:
    """Reference statistics as `build` computes and `read_reference` returns them."""

    hist: dict[str, np.ndarray]  # modality -> [BINS]
    feature_mean: dict[str, np.ndarray] = field(default_factory=dict)  # level -> [C]
    feature_std: dict[str, np.ndarray] = field(default_factory=dict)
    frame_mean_mean: dict[str, np.ndarray] = field(default_factory=dict)
    frame_mean_std: dict[str, np.ndarray] = field(default_factory=dict)
    heldout: dict[str, np.ndarray] = field(default_factory=dict)  # test -> [n_heldout] scores
    attrs: dict[str, Any] = field(default_factory=dict)

    def calibration(self, test: str) -> tuple[float, float, int]:
        """(mean, std, count) of the held-out scores of `test` (``visible``, ``feature_C3``)."""
        s = self.heldout[test]
        sd = float(s.std(ddof=1)) if len(s) > 1 else 0.0
        return float(s.mean()), sd, len(s)


def reference_indices(n: int) -> tuple[list[int], list[int]]:
    """(statistics frames, held-out frames) of a store of n samples; each capped to keep the
    pass cheap (evenly spaced). Stores of fewer than 3 samples use frame 0 for both."""
    held = [i for i in range(n) if is_heldout(i)]
    ref = [i for i in range(n) if not is_heldout(i)]
    if not held:
        held = ref[-1:]
    return _spread(ref, MAX_REFERENCE_FRAMES), _spread(held, MAX_REFERENCE_FRAMES // 4)


def _spread(indices: list[int], cap: int) -> list[int]:
    if len(indices) <= cap:
        return indices
    step = len(indices) / cap
    return [indices[int(k * step)] for k in range(cap)]


def build(
    frames: Mapping[int, Mapping[str, np.ndarray]],
    features: Mapping[int, Mapping[str, np.ndarray]],
    ref: list[int],
    held: list[int],
) -> Reference:
    """Statistics from ``frames[i]`` ({"visible": [H, W] luma, "thermal": [H, W]} in
    [0, 1]) and ``features[i]`` ({level: [C, H, W]}) of the reference and held-out indices."""
    hist: dict[str, np.ndarray] = {}
    heldout: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        hist[m] = np.mean([frame_histogram(frames[i][m]) for i in ref], axis=0)
        heldout[m] = np.array([tv_distance(frame_histogram(frames[i][m]), hist[m]) for i in held])
    out = Reference(hist=hist, heldout=heldout)
    levels = list(features[ref[0]]) if features else []
    for lv in levels:
        stack = np.stack([np.asarray(features[i][lv], dtype=np.float64) for i in ref])
        out.feature_mean[lv] = stack.mean(axis=(0, 2, 3))
        out.feature_std[lv] = stack.std(axis=(0, 2, 3))
        fm = frame_channel_means(stack)
        out.frame_mean_mean[lv] = fm.mean(axis=0)
        out.frame_mean_std[lv] = fm.std(axis=0)
        held_fm = frame_channel_means(np.stack([features[i][lv] for i in held]))
        out.heldout[f"feature_{lv}"] = feature_score(
            held_fm, out.frame_mean_mean[lv], out.frame_mean_std[lv]
        )
    out.attrs = {
        "md_reference_version": REFERENCE_VERSION,
        "bins": BINS,
        "range": [0.0, 1.0],
        "visible": "luma 0.299 R + 0.587 G + 0.114 B of the [0, 1] RGB input",
        "thermal": "the [0, 1] thermal input (8-bit / 255, 16-bit / 65535)",
        "reference_samples": len(ref),
        "heldout_samples": len(held),
        "heldout_rule": "sample index % 3 == 2",
        "input_score": "total-variation distance of the frame histogram to hist_<modality>",
        "feature_score": "mean over channels of ((frame spatial mean - frame_mean_mean) / "
        "frame_mean_std)^2",
        "levels": levels,
    }
    return out


def _arrays(ref: Reference) -> Iterable[tuple[str, np.ndarray, tuple[str, ...]]]:
    for m, h in ref.hist.items():
        yield f"hist_{m}", h, (f"bin_{m}",)
    for lv in ref.feature_mean:
        dim = (f"channel_{lv}",)
        yield f"feature_mean_{lv}", ref.feature_mean[lv], dim
        yield f"feature_std_{lv}", ref.feature_std[lv], dim
        yield f"frame_mean_mean_{lv}", ref.frame_mean_mean[lv], dim
        yield f"frame_mean_std_{lv}", ref.frame_mean_std[lv], dim
    for test, s in ref.heldout.items():
        yield f"heldout_{test}", s, ("heldout",)  # every test scores the same held-out frames


def write_reference(group: zarr.Group, ref: Reference) -> int:
    """Write `ref` into ``group/reference`` (replacing it); returns the bytes of data."""
    sub = group.require_group(REFERENCE_GROUP)
    nbytes = 0
    for name, values, dims in _arrays(ref):
        arr = sub.create_array(
            name,
            shape=values.shape,
            dtype="float64",
            chunks=values.shape or (1,),
            dimension_names=dims,
            overwrite=True,
        )
        arr[...] = values
        nbytes += values.nbytes
    sub.attrs.update(ref.attrs)
    return nbytes


def read_reference(group: zarr.Group, url: str) -> Reference:
    """The reference statistics of the store at `url`; a one-line `StoreError` for stores
    cached before md recorded them."""
    try:
        sub = group[REFERENCE_GROUP]
    except KeyError:
        sub = None
    if not isinstance(sub, zarr.Group):
        raise StoreError(
            f"{url}: the store has no reference statistics (cached before md "
            f"{REFERENCE_SINCE}); re-cache with md >= {REFERENCE_SINCE} (md cache-teacher "
            "--overwrite) to use md drift"
        )
    group_ = sub
    attrs = dict(group_.attrs.asdict())

    def values(name: str) -> np.ndarray:
        node = group_[name]
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{url}: reference/{name} is not an array; re-cache the store")
        return np.asarray(node[...])

    ref = Reference(hist={}, attrs=attrs)
    for m in MODALITIES:
        ref.hist[m] = values(f"hist_{m}")
        ref.heldout[m] = values(f"heldout_{m}")
    levels = attrs.get("levels")
    for lv in levels if isinstance(levels, list) else []:
        lv = str(lv)
        for key in ("feature_mean", "feature_std", "frame_mean_mean", "frame_mean_std"):
            getattr(ref, key)[lv] = values(f"{key}_{lv}")
        ref.heldout[f"feature_{lv}"] = values(f"heldout_feature_{lv}")
    return ref
