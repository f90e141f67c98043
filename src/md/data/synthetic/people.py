"""Pedestrians: articulated figures whose skin and clothing have their own temperatures."""

from __future__ import annotations

import numpy as np

from md.data.synthetic.camera import Conditions
from md.data.synthetic.constants import PERSON, RGB, Array
from md.data.synthetic.noise import brightness_temperature
from md.data.synthetic.things import Part, Thing, _rgb, capsule, ellipse, union

CLOTHES = np.array(
    [
        [0.04, 0.04, 0.05],
        [0.06, 0.06, 0.1],
        [0.15, 0.15, 0.16],
        [0.35, 0.33, 0.3],
        [0.5, 0.1, 0.08],
        [0.1, 0.2, 0.4],
        [0.6, 0.58, 0.55],
        [0.3, 0.25, 0.15],
        [0.08, 0.2, 0.1],
        [0.7, 0.6, 0.3],
    ]
)
RARE_APPEARANCE = "rare"  # the under-represented appearance of `md data synth --appearance`
SKIN = np.array([[0.55, 0.4, 0.32], [0.45, 0.32, 0.24], [0.3, 0.2, 0.15], [0.62, 0.48, 0.4]])


def make_person(
    rng: np.random.Generator,
    cond: Conditions,
    x: float,
    z: float,
    height: float,
    camouflage: RGB | None = None,
    appearance: str | None = None,
) -> Thing:
    """An articulated pedestrian: head, torso, two arms, two legs, in a walking pose.

    Skin reads ~33 °C; clothing sits between skin and air by its insulation and is heated
    by the sun by day in proportion to its darkness, so a dark coat on hot asphalt can be
    as warm as the road while at night the whole figure stands out.

    ``appearance="rare"`` (the under-represented group of `md data synth --appearance`): a
    long, light, well-insulated coat: pale clothing in visible and clothing at nearly the
    air temperature in thermal, so only the face stays warm. The random draws are the same
    as for a common person, so the rest of the frame does not change.
    """
    h = height
    side = rng.random() < 0.4  # side view: narrower body, legs apart along the stride
    bw = (0.1 if side else 0.14) * h  # torso half width
    stride = rng.uniform(-0.16, 0.16) * h if side else rng.uniform(0.0, 0.06) * h
    hip = 0.0 if side else 0.05 * h
    swing = rng.uniform(-0.1, 0.1) * h
    lean = rng.uniform(-0.02, 0.02) * h
    head = ellipse(lean, 0.93 * h, 0.06 * h, 0.07 * h)
    torso = capsule((lean, 0.78 * h), (0.0, 0.55 * h), bw)
    arms = union(
        capsule((lean - bw, 0.8 * h), (-bw - 0.02 * h + swing, 0.5 * h), 0.035 * h),
        capsule((lean + bw, 0.8 * h), (bw + 0.02 * h - swing, 0.5 * h), 0.035 * h),
    )
    legs = union(
        capsule((-hip, 0.5 * h), (-hip - stride, 0.03 * h), 0.055 * h),
        capsule((hip, 0.5 * h), (hip + stride, 0.03 * h), 0.055 * h),
    )
    top, bottom = (CLOTHES[rng.integers(0, len(CLOTHES), 2)] * rng.uniform(0.8, 1.2)).clip(0, 1)
    if camouflage is not None:  # clothes matching the background (a day-time failure case)
        top = bottom = np.clip(np.array(camouflage) * rng.uniform(0.85, 1.15, 3), 0, 1)
    skin = SKIN[rng.integers(0, len(SKIN))]
    t_skin = rng.uniform(31.5, 34.5)
    keep = rng.uniform(0.4, 0.75)  # fraction of the skin-air difference left at the surface
    if appearance == RARE_APPEARANCE:
        top = bottom = np.clip(0.75 + 0.2 * top, 0, 1)  # pale coat, shade kept from the draw
        keep = 0.08 * keep  # insulated: the surface sits close to the air temperature

    def cloth_temp(albedo: Array) -> float:
        t = cond.t_air + keep * (t_skin - cond.t_air)
        t += 0.3 * cond.solar_heating * (1 - float(np.mean(albedo)))  # sun on clothing
        return float(brightness_temperature(t, 0.93, cond.t_reflected))

    t_face = float(brightness_temperature(t_skin, 0.98, cond.t_reflected))
    parts = [
        Part(legs, _rgb(bottom), cloth_temp(bottom) + 1.0, PERSON),  # trousers are thin
        Part(torso, _rgb(top), cloth_temp(top), PERSON),
        Part(arms, _rgb(top), cloth_temp(top) + 0.5, PERSON),
        Part(head, _rgb(skin), t_face, PERSON),
    ]
    return Thing("person", x, z, 0.3 * h, 1.0 * h, parts, annotate="person")
