"""Roadside objects: lamps, trees, low occluders, cones and wheel stops, and the clutter that
looks like a person in one band only (posts and posters in visible; warm cabinets and dogs in
thermal)."""

from __future__ import annotations

import numpy as np

from md.data.synthetic.camera import Conditions
from md.data.synthetic.constants import CAR_STOP, CONE, RGB, Array, Mask
from md.data.synthetic.noise import ValueNoise, brightness_temperature
from md.data.synthetic.people import CLOTHES, make_person
from md.data.synthetic.things import Part, Thing, _mat, _rgb, _scale, ellipse, rect, shifted, union


def make_lamp(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """A street lamp: a painted pole (sun-heated by day) and a hot, glowing head at night."""
    top = rng.uniform(5, 8)
    pole = rect(-0.07, 0.07, 0.0, top)
    arm = rect(-0.6 if x > 0 else 0.0, 0.0 if x > 0 else 0.6, top - 0.1, top)
    cx = -0.5 if x > 0 else 0.5
    head = ellipse(cx, top - 0.15, 0.25, 0.1)
    grey = (0.25, 0.26, 0.27)
    colour = (1.0, 0.72, 0.4) if rng.random() < 0.5 else (0.9, 0.95, 1.0)
    hot = cond.t_air + (45 if cond.night else 5)
    return Thing(
        "lamp",
        x,
        z,
        0.65,
        top,
        [
            Part(union(pole, arm), grey, _mat(cond, grey, 0.9, insolation=0.9, mass=0.2, extra=3)),
            Part(
                head,
                (0.8, 0.8, 0.8),
                float(brightness_temperature(hot, 0.9, cond.t_reflected)),
                emission=_scale(colour, 60.0 if cond.night else 0.0),
            ),
        ],
    )


def make_post(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """Person-like clutter for the visible camera: bollards, sign posts, hydrants.

    A post with a round top the height of a person has a pedestrian's outline in visible;
    in thermal it is bare or painted metal at (or, by day, above) air temperature.
    """
    kind = rng.integers(0, 3)
    colour = _rgb(CLOTHES[rng.integers(0, len(CLOTHES))])
    if kind == 0:  # sign post with a round sign
        top = rng.uniform(1.6, 2.2)
        shape = union(rect(-0.04, 0.04, 0, top - 0.3), ellipse(0, top - 0.3, 0.3, 0.3))
        hw, height = 0.3, top
    elif kind == 1:  # bollard / hydrant
        top = rng.uniform(0.7, 1.1)
        shape = union(rect(-0.12, 0.12, 0, top * 0.85), ellipse(0, top * 0.85, 0.12, 0.15))
        hw, height = 0.15, top
    else:  # mannequin-like sculpture / dressed post: body and head, no warmth
        top = rng.uniform(1.5, 1.9)
        shape = union(rect(-0.15, 0.15, 0.0, 0.8 * top), ellipse(0, 0.9 * top, 0.1, 0.1 * top))
        hw, height = 0.18, top
    metal = rng.random() < 0.5
    t = _mat(cond, colour, 0.3 if metal else 0.9, insolation=0.8, mass=0.3)
    return Thing("post", x, z, hw, height, [Part(shape, colour, t)])


def make_poster(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """A billboard with a printed person: a pedestrian in visible, a flat board in thermal."""
    board_t = _mat(cond, (0.7, 0.7, 0.7), 0.92, insolation=0.6, mass=0.3)
    h = rng.uniform(1.4, 1.9)
    figure = make_person(rng, cond, 0.0, 1.0, h * 0.9)
    parts = [
        Part(rect(-0.05, 0.05, 0.0, 0.4), (0.2, 0.2, 0.2), board_t),
        Part(rect(-0.5, 0.5, 0.4, 0.4 + h), (0.75, 0.75, 0.7), board_t),
    ]
    for p in figure.parts:  # printed figure: shifted up onto the board, board temperature
        parts.append(Part(shifted(p.shape, 0.0, 0.45), p.albedo, board_t))
    return Thing("poster", x, z, 0.5, 0.45 + h, parts)


def make_cabinet(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """Hot clutter for the thermal camera: transformer cabinets, AC units, vending machines."""
    w, h = rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.9)
    colour = _rgb(np.array([0.5, 0.52, 0.5]) * rng.uniform(0.4, 1.3))
    warm = rng.uniform(6, 18)
    vending = cond.night and rng.random() < 0.4
    emission = (0.8, 0.85, 0.9) if vending else (0.0, 0.0, 0.0)
    return Thing(
        "cabinet",
        x,
        z,
        w / 2,
        h,
        [
            Part(
                rect(-w / 2, w / 2, 0, h),
                colour,
                _mat(cond, colour, 0.9, insolation=0.7, mass=0.6, extra=warm),
            ),
            Part(
                rect(-w / 3, w / 3, 0.3 * h, 0.9 * h),
                colour,
                _mat(cond, colour, 0.9, extra=warm),
                emission=_scale(emission, 3.0),
            ),
        ],
    )


def make_dog(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """A warm animal: small, warm and not a person (a thermal false-positive candidate)."""
    fur = _rgb(np.array([0.35, 0.25, 0.15]) * rng.uniform(0.3, 1.6))
    t = float(brightness_temperature(cond.t_air + 0.6 * (36 - cond.t_air), 0.95, cond.t_reflected))
    s = rng.uniform(0.7, 1.1)
    shape = union(
        ellipse(0, 0.4 * s, 0.35 * s, 0.14 * s),
        ellipse(0.32 * s, 0.55 * s, 0.1 * s, 0.1 * s),
        rect(-0.3 * s, -0.22 * s, 0, 0.4 * s),
        rect(0.2 * s, 0.28 * s, 0, 0.4 * s),
    )
    return Thing("dog", x, z, 0.45 * s, 0.65 * s, [Part(shape, fur, t)])


def make_tree(
    rng: np.random.Generator, cond: Conditions, x: float, z: float, noise: ValueNoise
) -> Thing:
    """Street tree: a trunk and a ragged crown; leaves stay near air temperature
    (transpiration), so crowns are cool by day and blend in at night."""
    top = rng.uniform(4, 8)
    r = rng.uniform(1.2, 2.5)
    off = rng.uniform(0, 50)

    def crown(u: Array, v: Array) -> Mask:
        rho = (u / r) ** 2 + ((v - top + r) / (0.9 * r)) ** 2
        return rho <= 1.0 + 0.45 * noise(u + off, v, 0.6)

    leaf = _rgb(np.array([0.08, 0.16, 0.05]) * rng.uniform(0.7, 1.4))
    bark = (0.15, 0.11, 0.08)
    t_leaf = float(
        brightness_temperature(
            cond.t_air + (1.5 if not cond.night else -1.0), 0.97, cond.t_reflected
        )
    )
    return Thing(
        "tree",
        x,
        z,
        r * 1.45,
        top + 0.2 * r,
        [
            Part(rect(-0.15, 0.15, 0, top - r), bark, _mat(cond, bark, 0.95, insolation=0.4)),
            Part(crown, leaf, t_leaf),
        ],
    )


def make_bush(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """Low occluder (hedge, bin, planter) that hides legs: partial occlusions."""
    w, h = rng.uniform(0.6, 2.0), rng.uniform(0.5, 1.0)
    if rng.random() < 0.5:
        colour: RGB = _rgb(np.array([0.08, 0.18, 0.06]) * rng.uniform(0.7, 1.3))
        t = float(
            brightness_temperature(
                cond.t_air + (1 if not cond.night else -1), 0.97, cond.t_reflected
            )
        )
        shape = ellipse(0, h / 2, w / 2, h / 2)
    else:
        colour = _rgb(np.array([0.3, 0.3, 0.32]) * rng.uniform(0.5, 1.5))
        t = _mat(cond, colour, 0.92, insolation=0.7)
        shape = rect(-w / 2, w / 2, 0, h)
    return Thing("bush", x, z, w / 2, h, [Part(shape, colour, t)])


RETRO_GAIN = 30.0  # retro-reflective sheeting returns light to its source (the camera's car)


def make_cone(
    rng: np.random.Generator, cond: Conditions, x: float, z: float, headlight: float = 0.0
) -> Thing:
    """A traffic cone: saturated orange with a retro-reflective band that shines in the
    headlights (`headlight` = their illuminance at the cone), but thin plastic with no heat
    capacity, at air temperature: salient in visible, cold and faint in thermal."""
    h = rng.uniform(0.5, 0.75)
    body = lambda u, v: (v >= 0.04) & (v <= h) & (np.abs(u) <= 0.17 - 0.13 * v / h)  # noqa: E731
    band = lambda u, v: body(u, v) & (v >= 0.45 * h) & (v <= 0.62 * h)  # noqa: E731
    orange = (0.85, 0.22, 0.03)
    t = _mat(cond, orange, 0.92, insolation=0.2, mass=0.0)
    glint = _scale((1.0, 1.0, 1.0), RETRO_GAIN * headlight)
    return Thing(
        "cone",
        x,
        z,
        0.22,
        h,
        [
            Part(rect(-0.22, 0.22, 0, 0.04), (0.1, 0.1, 0.1), t, CONE),
            Part(body, orange, t, CONE),
            Part(band, (0.9, 0.9, 0.9), t, CONE, glint),
        ],
    )


def make_car_stop(rng: np.random.Generator, cond: Conditions, x: float, z: float) -> Thing:
    """A parking wheel stop: a low concrete block painted yellow, ~air temperature."""
    w = rng.uniform(1.4, 1.8)
    colour = (0.7, 0.6, 0.15) if rng.random() < 0.6 else (0.5, 0.5, 0.48)
    t = _mat(cond, colour, 0.92, insolation=0.9, mass=0.9)
    return Thing(
        "car_stop", x, z, w / 2, 0.16, [Part(rect(-w / 2, w / 2, 0, 0.15), colour, t, CAR_STOP)]
    )
