"""The street: road, curbs, lane dividers, crossings and the building facades on both sides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from md.data.synthetic.constants import Array, Task


@dataclass(frozen=True)
class Facade:
    """Buildings along one side of the street: the plane X = `x`, blocks along Z."""

    x: float
    edges: Array  # (B+1,) Z boundaries of the blocks
    heights: Array  # (B,) m; 0 = a gap (alley, parking lot)
    colours: Array  # (B, 3) albedo
    window_pitch: Array  # (B,) m between window columns
    lit: Array  # (B,) fraction of windows lit at night


@dataclass(frozen=True)
class Street:
    """Layout of the ground and facades (all in metres; the camera is at X = 0)."""

    road: tuple[float, float]  # X of the left and right road edges
    curb: float  # width of the curb band beyond each road edge
    lanes: tuple[float, ...]  # X of dashed lane dividers
    facades: tuple[Facade, Facade]  # left, right
    far: float  # distance to the end of the street (far skyline)
    skyline: Array  # (K, 2) far buildings: rows of (left edge X, height), m, sorted by X
    crosswalk: tuple[float, float] | None
    bump: tuple[float, float] | None  # Z range of a speed bump across the road
    guardrail: tuple[float, float, float] | None  # X, Z start, Z end
    puddles: bool
    sidewalk_albedo: float


def sample_facade(rng: np.random.Generator, x: float, far: float, campus: bool) -> Facade:
    """City blocks 4-26 m tall (KAIST) or lower campus buildings with more gaps (MFNet)."""
    edges = [0.0]
    while edges[-1] < far:
        edges.append(edges[-1] + rng.uniform(8, 30))
    n = len(edges) - 1
    tallest, gaps = (14, 0.35) if campus else (26, 0.15)
    heights = rng.uniform(4, tallest, n) * (rng.random(n) > gaps)
    palette = np.array(
        [
            [0.45, 0.42, 0.38],
            [0.35, 0.2, 0.15],
            [0.55, 0.55, 0.55],
            [0.3, 0.32, 0.35],
            [0.6, 0.52, 0.4],
            [0.25, 0.25, 0.28],
        ]
    )
    colours = palette[rng.integers(0, len(palette), n)] * rng.uniform(0.7, 1.2, (n, 1))
    return Facade(
        x=x,
        edges=np.array(edges),
        heights=heights,
        colours=np.clip(colours, 0.03, 0.9),
        window_pitch=rng.uniform(2.5, 4.0, n),
        lit=rng.uniform(0.1, 0.5, n),
    )


def sample_street(rng: np.random.Generator, task: Task) -> Street:
    """A city street (KAIST) or campus road (MFNet) with random widths and features."""
    left, right = -rng.uniform(2.5, 6.0), rng.uniform(3.0, 8.0)
    curb = rng.uniform(0.2, 0.35)
    seg = task == "segmentation"
    sidewalk = rng.uniform(3.0, 9.0, 2) if seg else rng.uniform(2.0, 5.0, 2)
    far = rng.uniform(80, 160)
    fl = sample_facade(rng, left - curb - sidewalk[0], far, seg)
    fr = sample_facade(rng, right + curb + sidewalk[1], far, seg)
    xs = np.sort(rng.uniform(-60, 60, 7))
    skyline = np.stack([np.concatenate([[-1e3], xs]), rng.uniform(3, 30, 8)], axis=1)
    lanes = tuple(np.arange(left + 3.2, right - 1.5, 3.3))
    z0 = rng.uniform(8, 25)
    return Street(
        road=(left, right),
        curb=curb,
        lanes=lanes,
        facades=(fl, fr),
        far=far,
        skyline=skyline,
        crosswalk=(z0, z0 + 3.0) if rng.random() < 0.25 else None,
        bump=None,
        guardrail=None,
        puddles=rng.random() < 0.3,
        sidewalk_albedo=rng.uniform(0.3, 0.5) if not seg else rng.uniform(0.25, 0.45),
    )
