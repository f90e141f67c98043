"""Objects are upright billboards on the ground: 2-D shapes in metres (u across, v up), parts
with visible and thermal materials, and the material helpers the object makers share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from md.data.synthetic.camera import Conditions
from md.data.synthetic.constants import RGB, Array, Mask
from md.data.synthetic.noise import brightness_temperature

Shape = Callable[[Array, Array], Mask]  # (u across, v up) in metres -> inside


def ellipse(cu: float, cv: float, ru: float, rv: float) -> Shape:
    return lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def rect(u0: float, u1: float, v0: float, v1: float) -> Shape:
    return lambda u, v: (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def capsule(a: tuple[float, float], b: tuple[float, float], r: float) -> Shape:
    """Points within `r` of the segment a-b (limbs)."""
    du, dv = b[0] - a[0], b[1] - a[1]
    norm = du * du + dv * dv + 1e-12

    def inside(u: Array, v: Array) -> Mask:
        t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / norm, 0.0, 1.0)
        return (u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2 <= r * r

    return inside


def ring(cu: float, cv: float, r_out: float, r_in: float) -> Shape:
    def inside(u: Array, v: Array) -> Mask:
        d2 = (u - cu) ** 2 + (v - cv) ** 2
        return (d2 <= r_out**2) & (d2 >= r_in**2)

    return inside


def union(*shapes: Shape) -> Shape:
    def inside(u: Array, v: Array) -> Mask:
        out = shapes[0](u, v)
        for s in shapes[1:]:
            out = out | s(u, v)
        return out

    return inside


@dataclass(frozen=True)
class Part:
    """One surface of an object: a shape and its visible and thermal materials."""

    shape: Shape
    albedo: RGB
    t_app: float  # brightness temperature, °C (emissivity already applied)
    label: int = 0
    emission: RGB = (0.0, 0.0, 0.0)
    opacity: float = 1.0  # < 1 for see-through areas labelled as the object (spoked wheels)


@dataclass
class Thing:
    """An upright object whose base centre stands on the ground at (x, z)."""

    kind: str
    x: float
    z: float
    half_width: float  # m, bounds of all parts
    height: float  # m
    parts: list[Part]
    annotate: str | None = None  # "person" or "people" (KAIST box), else None
    ident: int = 0  # owner id on the canvas (1-based, set when drawn)

    def silhouette(self, u: Array, v: Array) -> Mask:
        out = np.zeros(np.broadcast(u, v).shape, bool)
        for part in self.parts:
            out |= part.shape(u, v)
        return out


def _mat(
    cond: Conditions,
    albedo: RGB,
    emissivity: float,
    insolation: float = 0.7,
    mass: float = 0.5,
    extra: float = 0.0,
) -> float:
    """Brightness temperature of a passive, upright material (+ `extra` K of own heat)."""
    t = float(cond.surface_temp(float(np.mean(albedo)), insolation, mass)) + extra
    return float(brightness_temperature(t, emissivity, cond.t_reflected))


def _rgb(a: Array | Sequence[float]) -> RGB:
    return (float(a[0]), float(a[1]), float(a[2]))


def _scale(rgb: RGB, k: float) -> RGB:
    return (rgb[0] * k, rgb[1] * k, rgb[2] * k)


def shifted(shape: Shape, du: float, dv: float) -> Shape:
    """`shape` moved by (du, dv) metres."""
    return lambda u, v: shape(u - du, v - dv)
