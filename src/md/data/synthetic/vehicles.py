"""Vehicles: cars (seen from behind, the front or the side) and bicycles."""

from __future__ import annotations

import numpy as np

from md.data.synthetic.camera import Conditions
from md.data.synthetic.constants import BIKE, CAR
from md.data.synthetic.noise import brightness_temperature
from md.data.synthetic.people import CLOTHES
from md.data.synthetic.things import (
    Part,
    Thing,
    _mat,
    _rgb,
    _scale,
    capsule,
    ellipse,
    rect,
    ring,
    union,
)

CAR_PAINT = np.array(
    [
        [0.8, 0.8, 0.8],
        [0.05, 0.05, 0.05],
        [0.5, 0.5, 0.52],
        [0.5, 0.05, 0.05],
        [0.1, 0.15, 0.35],
        [0.25, 0.25, 0.25],
        [0.75, 0.7, 0.6],
    ]
)


def make_car(rng: np.random.Generator, cond: Conditions, x: float, z: float, facing: str) -> Thing:
    """A car seen from behind, the front or the side.

    Painted metal (emissivity ~0.9) heats strongly in the sun when dark; the glass
    (emissivity ~0.8) mirrors the cold sky; tyres and the engine bay of a car that has been
    driven are warm day and night; head/tail lights emit at night.
    """
    paint = _rgb(CAR_PAINT[rng.integers(0, len(CAR_PAINT))])
    driven = rng.random() < 0.6
    length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
    hw = (length if facing == "side" else width) / 2
    roof = rng.uniform(1.4, 1.6)
    body_t = _mat(cond, paint, 0.9, insolation=0.8, mass=0.6)
    glass_t = float(
        brightness_temperature(cond.t_air + (2 if cond.night else 8), 0.8, cond.t_reflected)
    )
    tyre_t = float(
        brightness_temperature(cond.t_air + (14 if driven else 3), 0.95, cond.t_reflected)
    )
    lights = (1.0, 0.9, 0.8) if facing == "front" else (1.0, 0.05, 0.02)
    glow = 40.0 if cond.night else 0.0
    if facing == "side":
        parts = [
            Part(
                union(rect(-hw, hw, 0.3, 0.95), rect(-0.55 * hw, 0.45 * hw, 0.95, roof)),
                paint,
                body_t,
                CAR,
            ),
            Part(rect(-0.5 * hw, 0.4 * hw, 1.0, roof - 0.08), (0.05, 0.06, 0.08), glass_t, CAR),
            Part(
                union(ellipse(-0.65 * hw, 0.32, 0.32, 0.32), ellipse(0.65 * hw, 0.32, 0.32, 0.32)),
                (0.03, 0.03, 0.03),
                tyre_t,
                CAR,
            ),
        ]
    else:
        engine_t = tyre_t + (8 if driven and facing == "front" else 0)
        parts = [
            Part(
                union(rect(-hw, hw, 0.25, 1.0), rect(-0.85 * hw, 0.85 * hw, 1.0, roof)),
                paint,
                body_t,
                CAR,
            ),
            Part(rect(-0.75 * hw, 0.75 * hw, 1.05, roof - 0.08), (0.05, 0.06, 0.08), glass_t, CAR),
            Part(
                union(rect(-hw, -0.7 * hw, 0.0, 0.35), rect(0.7 * hw, hw, 0.0, 0.35)),
                (0.03, 0.03, 0.03),
                tyre_t,
                CAR,
            ),
            Part(rect(-0.5 * hw, 0.5 * hw, 0.3, 0.5), (0.1, 0.1, 0.1), engine_t, CAR),
            Part(
                union(rect(-hw, -0.75 * hw, 0.7, 0.85), rect(0.75 * hw, hw, 0.7, 0.85)),
                (0.9, 0.9, 0.9) if facing == "front" else (0.6, 0.05, 0.03),
                body_t + (6 if cond.night else 0),
                CAR,
                _scale(lights, glow),
            ),
        ]
    return Thing("car", x, z, hw, roof, parts)


def make_bike(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """A bicycle seen from the side: two wheels and a frame; metal reads cold in thermal."""
    r = rng.uniform(0.3, 0.36)
    frame_c = _rgb(CLOTHES[rng.integers(0, len(CLOTHES))])
    t_metal = _mat(cond, frame_c, 0.35, insolation=0.6, mass=0.1)
    t_tyre = _mat(cond, (0.05, 0.05, 0.05), 0.95, insolation=0.5, mass=0.2)
    a, b = (-0.55, r), (0.55, r)
    seat, bar = (-0.15, 0.9), (0.4, 0.95)
    frame = union(
        capsule(a, seat, 0.025),
        capsule(seat, b, 0.025),
        capsule(a, (0.1, r), 0.025),
        capsule((0.1, r), seat, 0.025),
        capsule(seat, bar, 0.025),
        capsule(bar, b, 0.025),
    )
    wheels = union(ring(a[0], r, r, r - 0.05), ring(b[0], r, r, r - 0.05))
    spokes = union(ellipse(a[0], r, r, r), ellipse(b[0], r, r, r), capsule(a, b, 0.2))
    return Thing(
        "bike",
        x,
        z,
        0.55 + r,
        1.0,
        [
            Part(spokes, (0.3, 0.3, 0.3), t_metal, BIKE, opacity=0.12),
            Part(wheels, (0.04, 0.04, 0.04), t_tyre, BIKE),
            Part(frame, frame_c, t_metal, BIKE),
        ],
    )
