"""Scene composition: what one frame holds, and where its people, cars, bikes and clutter are
placed (KAIST-like for detection, MFNet-like for segmentation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from md.data.synthetic.camera import Camera, Conditions, sample_camera, sample_conditions
from md.data.synthetic.constants import (
    BIKE,
    BUMP,
    CAR,
    CAR_STOP,
    CONE,
    GUARDRAIL,
    PERSON,
    RGB,
    Array,
    Task,
)
from md.data.synthetic.lights import Lamp, Lights
from md.data.synthetic.noise import ValueNoise
from md.data.synthetic.people import make_person
from md.data.synthetic.roadside import (
    make_bush,
    make_cabinet,
    make_car_stop,
    make_cone,
    make_dog,
    make_lamp,
    make_post,
    make_poster,
    make_tree,
)
from md.data.synthetic.street import Street, sample_street
from md.data.synthetic.things import Part, Thing, _rgb, _scale, shifted
from md.data.synthetic.vehicles import make_bike, make_car


@dataclass
class Scene:
    """Everything needed to render one frame."""

    cam: Camera
    cond: Conditions
    street: Street
    noise: ValueNoise
    lights: Lights
    things: list[Thing] = field(default_factory=list)
    window_table: Array = field(default_factory=lambda: np.zeros(1))
    appearance: str | None = None  # every annotated person of the frame (see make_person)


def new_scene(rng: np.random.Generator, task: Task, size: tuple[int, int], night: bool) -> Scene:
    """Camera, conditions, street layout and roadside furniture (lamps, trees)."""
    cam = sample_camera(rng, size)
    cond = sample_conditions(rng, night)
    street = sample_street(rng, task)
    scene = Scene(
        cam, cond, street, ValueNoise(rng), Lights((), 0.0), window_table=rng.random(4096)
    )
    lamps: list[Lamp] = []
    for side in (0, 1):
        edge = street.road[side] + (street.curb + 0.5) * (1 if side else -1)
        lamps += _line_with_lamps(rng, scene, edge)
        if rng.random() < (0.8 if task == "segmentation" else 0.55):
            _plant_trees(rng, scene, edge + (0.8 if side else -0.8))
    scene.lights = Lights(tuple(lamps), rng.uniform(1.0, 2.0) if night else 0.0)
    return scene


def _line_with_lamps(rng: np.random.Generator, scene: Scene, x: float) -> list[Lamp]:
    """Street lamps every 15-30 m along X = `x`; at night most of them are on."""
    lamps = []
    z = rng.uniform(3, 15)
    while z < 0.8 * scene.street.far:
        if rng.random() < 0.85:
            lamp = make_lamp(rng, scene.cond, x, z)
            scene.things.append(lamp)
            if scene.cond.night and rng.random() < 0.85:
                head_x = x + (-0.5 if x > 0 else 0.5)
                colour = lamp.parts[1].emission
                unit = _scale(colour, 1 / max(max(colour), 1e-9))  # colour at a peak of 1
                lamps.append((head_x, lamp.height - 0.15, z, rng.uniform(0.5, 1.5), unit))
        z += rng.uniform(15, 30)
    return lamps


def _plant_trees(rng: np.random.Generator, scene: Scene, x: float) -> None:
    z = rng.uniform(4, 12)
    while z < 0.7 * scene.street.far:
        scene.things.append(make_tree(rng, scene.cond, x + rng.uniform(-0.3, 0.3), z, scene.noise))
        z += rng.uniform(7, 16)


def sidewalk_x(rng: np.random.Generator, street: Street, side: int | None = None) -> float:
    """A random lateral position on one of the sidewalks."""
    side = int(rng.integers(0, 2)) if side is None else side
    edge = street.road[side] + street.curb * (1 if side else -1)
    facade = street.facades[side].x
    return float(edge + rng.uniform(0.2, 0.85) * (facade - edge))


def person_placement(
    rng: np.random.Generator, scene: Scene, small: float
) -> tuple[float, float, float]:
    """(x, z, height_m) of a pedestrian whose image height is log-uniform between
    `small` x image height and what fits above the bottom edge (perspective: small = far)."""
    cam, street = scene.cam, scene.street
    height_m = rng.uniform(1.5, 1.9) if rng.random() > 0.08 else rng.uniform(1.0, 1.3)
    z_min = cam.focal * cam.height_m / (cam.height - 1.0 - cam.horizon)
    h_max = cam.focal * height_m / z_min
    h_px = math.exp(
        rng.uniform(math.log(small * cam.height), math.log(max(h_max, small * cam.height * 1.5)))
    )
    z = max(cam.focal * height_m / h_px, z_min)
    column = rng.uniform(0.02, 0.98) * cam.width
    x = (column - cam.center_x) * z / cam.focal
    lo, hi = street.facades[0].x + 0.4, street.facades[1].x - 0.4
    return float(np.clip(x, lo, hi)), float(z), float(height_m)


def camouflage_colour(rng: np.random.Generator, scene: Scene, x: float, z: float) -> RGB:
    """The colour of what is behind a pedestrian: clothes that blend in by day."""
    street = scene.street
    if street.road[0] <= x <= street.road[1]:
        return (0.12, 0.12, 0.125)
    if rng.random() < 0.5:
        return _rgb(street.sidewalk_albedo * np.array([1.0, 0.95, 0.88]))
    facade = street.facades[0 if x < 0 else 1]
    idx = int(
        np.clip(np.searchsorted(facade.edges, z, side="right") - 1, 0, len(facade.heights) - 1)
    )
    return _rgb(facade.colours[idx])


def add_pedestrians(rng: np.random.Generator, scene: Scene, count: int) -> None:
    """People at random depths, some camouflaged (day), some behind an occluder."""
    cond = scene.cond
    for _ in range(count):
        x, z, hm = person_placement(rng, scene, small=0.045)
        camo = (
            camouflage_colour(rng, scene, x, z) if not cond.night and rng.random() < 0.25 else None
        )
        scene.things.append(make_person(rng, cond, x, z, hm, camo, scene.appearance))
        if rng.random() < 0.25:  # something in front: legs or one side hidden
            zo = max(z - rng.uniform(0.5, 2.5), 1.5)
            xo = x + rng.uniform(-0.5, 0.5)
            maker = [make_bush, make_post, make_cabinet][int(rng.integers(0, 3))]
            if z > 8 and rng.random() < 0.3 and scene.street.road[0] < xo < scene.street.road[1]:
                scene.things.append(make_car(rng, cond, xo + rng.uniform(-1, 1), z - 3, "back"))
            else:
                scene.things.append(maker(rng, cond, xo, zo))


def add_crowd(rng: np.random.Generator, scene: Scene) -> None:
    """A tight group of 2-3 distant people: one 'people' box, ignored by the evaluator."""
    x, z, hm = person_placement(rng, scene, small=0.06)
    z = max(z, scene.cam.focal * 1.7 / (0.14 * scene.cam.height))  # keep the group small
    members = [
        make_person(rng, scene.cond, 0.0, z, hm * rng.uniform(0.9, 1.1))
        for _ in range(int(rng.integers(2, 4)))
    ]
    parts = [
        Part(shifted(p.shape, 0.45 * i, 0.0), p.albedo, p.t_app, p.label)
        for i, m in enumerate(members)
        for p in m.parts
    ]
    width = 0.45 * (len(members) - 1) + 0.6 * hm
    scene.things.append(
        Thing(
            "people",
            x - 0.45 * (len(members) - 1) / 2,
            z,
            width,
            hm * 1.1,
            parts,
            annotate="people",
        )
    )


def add_cars(
    rng: np.random.Generator, scene: Scene, count: int, z_range: tuple[float, float] = (6, 60)
) -> None:
    """Cars in the lanes (oncoming on the left of the camera) and parked at the curbs."""
    left, right = scene.street.road
    for _ in range(count):
        z = rng.uniform(*z_range)
        if rng.random() < 0.4:  # parked along a curb, seen from behind or the side
            side = int(rng.integers(0, 2))
            x = (left + 1.1) if side == 0 else (right - 1.1)
            facing = "side" if rng.random() < 0.3 else "back"
        else:
            x = rng.uniform(left + 1.0, right - 1.0)
            facing = "front" if x < -1.5 else "back"
        scene.things.append(make_car(rng, scene.cond, x, z, facing))


def add_clutter(rng: np.random.Generator, scene: Scene, scale: float = 1.0) -> None:
    """Person-like visible clutter (posts, posters), hot clutter (cabinets, dogs), low
    occluders (bushes, bins) on the sidewalks."""
    cond, street = scene.cond, scene.street
    for maker, mean in (
        (make_post, 1.5),
        (make_poster, 0.5),
        (make_cabinet, 0.7),
        (make_bush, 1.2),
    ):
        for _ in range(int(rng.poisson(mean * scale))):
            scene.things.append(maker(rng, cond, sidewalk_x(rng, street), rng.uniform(4, 50)))
    if rng.random() < 0.15 * scale:
        x, z, _ = person_placement(rng, scene, small=0.05)
        scene.things.append(make_dog(rng, cond, x, z))


def compose_detection(rng: np.random.Generator, scene: Scene) -> None:
    """KAIST-like: pedestrians (0-6, log-uniform sizes), crowds, cars and clutter."""
    count = int(rng.choice(7, p=[0.08, 0.17, 0.2, 0.2, 0.15, 0.12, 0.08]))
    add_pedestrians(rng, scene, count)
    if rng.random() < 0.15:
        add_crowd(rng, scene)
    add_cars(rng, scene, int(rng.integers(0, 4)))
    add_clutter(rng, scene)


def compose_segmentation(rng: np.random.Generator, scene: Scene, featured: int) -> None:
    """MFNet-like: every class may appear; class `featured` always does, so any 8
    consecutive samples cover all 8 classes."""
    street = scene.street

    def want(cls: int, p: float) -> bool:
        return cls == featured or rng.random() < p

    if want(CAR, 0.8):
        add_cars(rng, scene, int(rng.integers(1, 5)), (5, 45))
    if want(PERSON, 0.7):
        add_pedestrians(rng, scene, int(rng.integers(1, 4)))
    if want(BIKE, 0.4):
        add_bikes(rng, scene)
    if want(CONE, 0.4):
        x = rng.uniform(street.road[0] + 0.5, street.road[1] - 0.5)
        z = rng.uniform(4, 12)
        for k in range(int(rng.integers(2, 6))):
            xk, zk = x + rng.uniform(-0.1, 0.1), z + 2.5 * k
            glow = scene.lights.headlight(xk, zk, 0.4)
            scene.things.append(make_cone(rng, scene.cond, xk, zk, glow))
    if want(CAR_STOP, 0.45):
        add_parking(rng, scene)
    add_clutter(rng, scene, scale=0.5)


def add_bikes(rng: np.random.Generator, scene: Scene) -> None:
    """A bike rack (a row of parked bikes) or a cyclist (a person riding a bike)."""
    cond = scene.cond
    if rng.random() < 0.5:
        side = int(rng.integers(0, 2))
        x, z = sidewalk_x(rng, scene.street, side), rng.uniform(3, 10)
        for k in range(int(rng.integers(3, 9))):  # a rack along the sidewalk, seen obliquely
            scene.things.append(make_bike(rng, cond, x + rng.uniform(-0.1, 0.1), z + 0.6 * k))
        return
    x = rng.uniform(scene.street.road[0] + 0.8, scene.street.road[1] - 0.8)
    z = rng.uniform(5, 25)
    bike = make_bike(rng, cond, x, z)
    rider = make_person(rng, cond, x, z, rng.uniform(1.55, 1.8))
    parts = [Part(shifted(p.shape, -0.1, 0.35), p.albedo, p.t_app, p.label) for p in rider.parts]
    bike.parts = parts[:1] + bike.parts + parts[1:]  # legs behind the frame, body in front
    bike.height = 0.35 + rider.height
    scene.things.append(bike)


def add_parking(rng: np.random.Generator, scene: Scene) -> None:
    """A row of wheel stops beside the road, some with a parked car behind."""
    side = int(rng.integers(0, 2))
    street = scene.street
    x = street.road[side] + (street.curb + rng.uniform(0.5, 1.5)) * (1 if side else -1)
    z = rng.uniform(3, 8)
    for k in range(int(rng.integers(4, 9))):
        zk = z + 2.7 * k
        scene.things.append(make_car_stop(rng, scene.cond, x, zk))
        if rng.random() < 0.4:
            car = make_car(rng, scene.cond, x + 2.5 * (1 if side else -1), zk + 0.3, "side")
            scene.things.append(car)


def sample_segmentation_street(rng: np.random.Generator, street: Street, featured: int) -> Street:
    """Add the ground-level classes: a guardrail (6) and a speed bump (8)."""
    from dataclasses import replace

    guard = None
    if featured == GUARDRAIL or rng.random() < 0.3:
        side = int(rng.integers(0, 2))
        gx = street.road[side] + (street.curb + 0.3) * (1 if side else -1)
        z0 = rng.uniform(3, 10)
        guard = (float(gx), z0, z0 + rng.uniform(20, 70))
    bump = None
    if featured == BUMP or rng.random() < 0.3:
        z0 = rng.uniform(5, 18)
        bump = (z0, z0 + rng.uniform(0.4, 0.7))
    return replace(street, guardrail=guard, bump=bump)
