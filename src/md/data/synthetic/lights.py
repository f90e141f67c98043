"""Lights and shadows: night lamps and the ego car's headlights, sky and sun on upright
surfaces, and the shadows facades and objects cast on the ground."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from md.data.synthetic.camera import Conditions
from md.data.synthetic.constants import RGB, Array
from md.data.synthetic.street import Facade, Street
from md.data.synthetic.things import Thing

Lamp = tuple[float, float, float, float, RGB]  # x, height, z (m), intensity, colour


@dataclass(frozen=True)
class Lights:
    """Night light sources: street lamp heads and the ego car's headlights."""

    lamps: tuple[Lamp, ...]
    headlights: float  # intensity of the ego car's low beams

    def on_ground(self, x: Array, z: Array) -> Array:
        """Illuminance (H', W', 3) on the ground: inverse-square x cosine (E = I h / d^3)."""
        e = np.zeros((*x.shape, 3))
        for lx, lh, lz, power, rgb in self.lamps:
            d2 = (x - lx) ** 2 + (z - lz) ** 2 + lh * lh
            e += (power * lh / d2**1.5)[..., None] * np.array(rgb)
        e += (self.headlights * self._beam(x, z) * 0.7 / (x * x + z * z + 0.49) ** 1.5)[..., None]
        return e

    def on_upright(self, x: float, z: float, y: float = 1.0) -> Array:
        """Illuminance (3,) on an upright surface facing the camera at (x, y, z)."""
        e = np.zeros(3)
        for lx, lh, lz, power, rgb in self.lamps:
            d = math.sqrt((x - lx) ** 2 + (z - lz) ** 2 + (lh - y) ** 2)
            horizontal = math.hypot(x - lx, z - lz)
            e += 0.5 * power * (horizontal + 0.3) / d**3 * np.array(rgb)
        return e + self.headlight(x, z, y)

    def headlight(self, x: float, z: float, y: float = 1.0) -> float:
        """Illuminance from the ego car's headlights (0.7 m up, at the camera) on an upright
        surface facing the camera at (x, y, z)."""
        d = math.sqrt(x * x + z * z + (y - 0.7) ** 2)
        return self.headlights * float(self._beam(np.array(x), np.array(z))) * z / d**3

    @staticmethod
    def _beam(x: Array, z: Array) -> Array:
        """Low-beam pattern: a cone ~±20° wide around the driving direction."""
        return np.asarray(np.exp(-((np.arctan2(x, np.maximum(z, 0.1)) / 0.35) ** 2)) * (z > 0.5))


def facade_height(facade: Facade, z: Array) -> Array:
    """Building height (m) along the facade at distances `z`; 0 past the end or in gaps."""
    idx = np.clip(np.searchsorted(facade.edges, z, side="right") - 1, 0, len(facade.heights) - 1)
    return np.where((z >= 0) & (z < facade.edges[-1]), facade.heights[idx], 0.0)


def ground_shade(
    cond: Conditions, street: Street, things: Sequence[Thing], x: Array, z: Array
) -> Array:
    """1 where the ground at (x, z) sees the sun, 0 in a cast shadow.

    A ray from the ground point towards the sun is intersected with each facade plane and
    with each object's plane (objects stand in the plane Z = z0); the point is shadowed if
    the hit lies inside the building or the object's silhouette.
    """
    sx, sy, sz = cond.sun_dir
    lit = np.ones(x.shape, bool)
    for facade in street.facades:
        if sx * facade.x <= 0:  # the sun is on the other side of the street
            continue
        t = (facade.x - x) / sx
        lit &= ~((t > 0) & (t * sy <= facade_height(facade, z + t * sz)))
    for thing in things:
        if abs(sz) < 1e-3:
            continue
        t = (thing.z - z) / sz
        near = (
            (t > 0) & (t * sy <= thing.height) & (np.abs(x + t * sx - thing.x) <= thing.half_width)
        )
        if near.any():
            hit = thing.silhouette(x[near] + t[near] * sx - thing.x, t[near] * sy)
            idx = np.flatnonzero(near)
            lit.flat[idx[hit]] = False
    return lit.astype(np.float64)


def _upright_light(cond: Conditions, normal: Array, shade: float) -> Array:
    """Illuminance (3,) on a surface with outward `normal`: sky + Lambertian sun."""
    cos_sun = max(0.0, float(np.dot(normal, cond.sun_dir)))
    return cond.ambient * 0.7 * np.array(cond.ambient_rgb) + cond.sun * cos_sun * shade * np.array(
        cond.sun_rgb
    )
