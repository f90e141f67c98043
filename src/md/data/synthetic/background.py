"""Background: the sky, the far skyline, the ground (road, curbs, sidewalks, markings,
puddles, speed bump), the building facades and the guardrail."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from md.data.synthetic.canvas import Canvas
from md.data.synthetic.constants import BUMP, CURVE, GUARDRAIL, Array, Mask
from md.data.synthetic.lights import _upright_light, facade_height, ground_shade
from md.data.synthetic.noise import brightness_temperature, gaussian_blur
from md.data.synthetic.scene import Scene
from md.data.synthetic.street import Facade, Street


def paint_sky(canvas: Canvas, scene: Scene) -> None:
    """Sky radiance and temperature by elevation: the clear sky is coldest at zenith and
    approaches air temperature at the horizon (longer path through warm air)."""
    cam, cond = scene.cam, scene.cond
    h, w = canvas.t_app.shape
    rows = slice(0, min(h, math.ceil(cam.foot_row(scene.street.far)) + 1))  # below: all ground
    y, x = np.mgrid[rows, 0:w] + 0.5
    elev = np.arctan2(cam.horizon - y, cam.focal)
    t_sky = cond.sky_temp(elev)
    canvas.t_app[rows] = t_sky
    if cond.night:  # city glow, brighter near the horizon
        glow = cond.ambient * 1.5 * (0.4 + 0.6 * np.exp(-np.maximum(elev, 0) / 0.2))
        canvas.emission[rows] = glow[..., None] * np.array([1.0, 0.75, 0.55])
        return
    clouds = np.clip(scene.noise(x, y, cam.width / 8, octaves=3) * 0.6 + 0.2, 0, 1)
    e = np.clip(elev, 0, None)[..., None]
    blue = np.array([0.45, 0.62, 0.95]) * (1 - np.exp(-e / 0.3)) + np.array(
        [0.85, 0.88, 0.92]
    ) * np.exp(-e / 0.3)
    sky = blue * (1 - clouds[..., None]) + np.array([0.92, 0.92, 0.94]) * clouds[..., None]
    canvas.emission[rows] = sky * (cond.sun + cond.ambient) * 0.75
    canvas.t_app[rows] = t_sky + clouds * (cond.t_air - 8 - t_sky).clip(0)  # clouds are warmer


def paint_skyline(canvas: Canvas, scene: Scene) -> None:
    """The far end of the street: hazy buildings and trees in the plane Z = far."""
    cam, cond, street = scene.cam, scene.cond, scene.street
    h, w = canvas.t_app.shape
    top = cam.horizon - cam.focal * (street.skyline[:, 1].max() - cam.height_m) / street.far
    rows = slice(max(0, math.floor(top)), min(h, math.ceil(cam.foot_row(street.far)) + 1))
    y, x = np.mgrid[rows, 0:w] + 0.5
    world_x = (x - cam.center_x) * street.far / cam.focal
    world_y = cam.height_m - (y - cam.horizon) * street.far / cam.focal
    idx = np.searchsorted(street.skyline[:, 0], world_x, side="right") - 1
    inside = (world_y >= 0) & (world_y <= street.skyline[np.clip(idx, 0, None), 1])
    haze = 0.55  # aerial perspective: far surfaces take the sky's colour
    albedo = (
        np.array([0.35, 0.35, 0.37]) * (1 + 0.1 * scene.noise(world_x, world_y, 3.0))[..., None]
    )
    light = _upright_light(cond, np.array([0.0, 0.0, -1.0]), 0.7)
    t = float(brightness_temperature(cond.surface_temp(0.35, 0.5), 0.9, cond.t_reflected))
    a = inside.astype(np.float64) * (1 - haze)
    canvas.paint((rows, slice(None)), a, albedo, light, t)


def paint_ground(canvas: Canvas, scene: Scene) -> None:
    """Road, curbs, sidewalks, markings, puddles and the speed bump, in world coordinates."""
    cam, cond, street = scene.cam, scene.cond, scene.street
    h, w = canvas.t_app.shape
    top = math.floor(cam.foot_row(street.far))
    ys, xs = np.mgrid[top:h, 0:w] + 0.5
    gx, gz = cam.ground(xs, ys)
    albedo, label, mass, eps = ground_materials(scene, gx, gz)
    shade = np.ones_like(gx) if cond.night else ground_shade(cond, street, scene.things, gx, gz)
    shade = gaussian_blur(shade, 0.4)  # penumbra / anti-aliasing
    if cond.night:
        light = cond.ambient * np.array(cond.ambient_rgb) + scene.lights.on_ground(gx, gz)
    else:
        direct = cond.sun * max(cond.sun_dir[1], 0.0) * shade
        light = cond.ambient * np.array(cond.ambient_rgb) + direct[..., None] * np.array(
            cond.sun_rgb
        )
    t_surf = cond.surface_temp(albedo.mean(-1), max(cond.sun_dir[1], 0.0) * shade, mass)
    mirror = cond.sky_temp(np.arctan2(ys - cam.horizon, cam.focal))  # sky at the mirror angle
    t_app = brightness_temperature(t_surf, eps, mirror)
    inside = (gz > 0) & (gz < street.far)
    window = (slice(top, h), slice(0, w))
    canvas.paint(window, inside.astype(np.float64), albedo, light, t_app)
    canvas.labels[window][inside] = label[inside]


def ground_materials(
    scene: Scene, gx: Array, gz: Array
) -> tuple[Array, NDArray[np.uint8], Array, Array]:
    """Albedo (.., 3), MFNet label, thermal mass and emissivity of the ground at (gx, gz)."""
    street, noise = scene.street, scene.noise
    left, right = street.road
    road = (gx >= left) & (gx <= right)
    curb = ~road & (gx >= left - street.curb) & (gx <= right + street.curb)
    tex = 1 + 0.18 * noise(gx, gz, 1.5, octaves=3)
    albedo = np.where(
        road[..., None],
        np.array([0.09, 0.09, 0.095]),
        street.sidewalk_albedo * np.array([1.0, 0.95, 0.88]),
    )
    paving = ~road & ~curb & ((np.mod(gx, 0.5) < 0.04) | (np.mod(gz, 0.3) < 0.03))
    albedo = albedo * np.where(paving, 0.7, 1.0)[..., None]
    albedo = np.where(curb[..., None], np.array([0.55, 0.55, 0.52]), albedo)
    albedo = albedo * tex[..., None]
    label = np.where(curb, CURVE, 0).astype(np.uint8)
    mass = np.where(road, 1.0, 0.6)
    eps = np.where(road, 0.95, 0.92)
    marks = road & _markings(street, gx, gz)
    albedo = np.where(marks[..., None], np.array([0.75, 0.75, 0.72]), albedo)
    if street.puddles:  # water mirrors the sky: emissivity ~0.6 at grazing angles
        wet = road & (noise(gx + 31.0, gz, 2.5, octaves=2) > 1.1)
        albedo = np.where(wet[..., None], albedo * 0.4, albedo)
        eps = np.where(wet, 0.6, eps)
    if street.bump is not None:
        bump = road & (gz >= street.bump[0]) & (gz <= street.bump[1])
        stripes = np.mod(gx, 0.9) < 0.45
        colour = np.where(
            stripes[..., None], np.array([0.75, 0.6, 0.1]), np.array([0.05, 0.05, 0.05])
        )
        albedo = np.where(bump[..., None], colour, albedo)
        label = np.where(bump, BUMP, label).astype(np.uint8)
    return albedo, label, mass, eps


def _markings(street: Street, gx: Array, gz: Array) -> Mask:
    """Dashed lane dividers, solid edge lines and an optional zebra crossing."""
    left, right = street.road
    marks = (np.abs(gx - left - 0.3) < 0.08) | (np.abs(gx - right + 0.3) < 0.08)
    for lane in street.lanes:
        marks |= (np.abs(gx - lane) < 0.08) & (np.mod(gz, 9.0) < 3.0)
    if street.crosswalk is not None:
        z0, z1 = street.crosswalk
        marks |= (gz >= z0) & (gz <= z1) & (np.mod(gx, 1.0) < 0.5)
    return marks


def paint_facades(canvas: Canvas, scene: Scene) -> None:
    """Building fronts on both sides: walls with window grids; windows are glass
    (cold in thermal, mirroring the sky) and some are lit at night."""
    cam = scene.cam
    h, w = canvas.t_app.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    for facade, normal in zip(scene.street.facades, (1.0, -1.0), strict=True):
        dx = xs - cam.center_x
        ok = (dx * facade.x) > 0
        z = np.where(ok, cam.focal * facade.x / np.where(ok, dx, 1.0), -1.0)
        wy = cam.height_m - (ys - cam.horizon) * z / cam.focal
        inside = ok & (z > 0) & (wy >= 0) & (wy <= facade_height(facade, z))
        if not inside.any():
            continue
        _paint_facade(canvas, scene, facade, normal, inside, z, wy)


def _paint_facade(
    canvas: Canvas, scene: Scene, facade: Facade, normal: float, inside: Mask, z: Array, wy: Array
) -> None:
    cond = scene.cond
    z, wy = z[inside], wy[inside]  # work on the facade's pixels only
    idx = np.clip(np.searchsorted(facade.edges, z, side="right") - 1, 0, len(facade.heights) - 1)
    pitch = facade.window_pitch[idx]
    cu, cv = np.mod(z, pitch) / pitch, np.mod(wy, 3.2) / 3.2
    window = (cu > 0.25) & (cu < 0.75) & (cv > 0.3) & (cv < 0.8) & (wy > 3.0)
    cell = (
        np.floor(z / pitch).astype(np.int64) * 7919 + np.floor(wy / 3.2).astype(np.int64) * 104729
    )
    lucky = scene.window_table[np.mod(cell + idx * 31, len(scene.window_table))]
    lit = window & cond.night & (lucky < facade.lit[idx])
    wall = facade.colours[idx] * (1 + 0.08 * scene.noise(z, wy, 2.0))[:, None]
    n = np.array([normal, 0.0, 0.0])
    t_wall = float(
        cond.surface_temp(
            float(np.mean(facade.colours)), max(0.0, float(np.dot(n, cond.sun_dir))), 0.9
        )
    )
    t_wall += 1.5 if cond.night else 0.0  # heated buildings leak heat at night
    glass, brick = (float(brightness_temperature(t_wall, e, cond.t_reflected)) for e in (0.8, 0.92))
    canvas.albedo[inside] = np.where(window[:, None], np.array([0.06, 0.07, 0.09]), wall)
    canvas.light[inside] = _upright_light(cond, n, 1.0)
    canvas.t_app[inside] = np.where(window, glass, brick)
    glow = np.array([1.0, 0.8, 0.5]) * (0.05 + 0.2 * lucky[:, None])
    canvas.emission[inside] = np.where(lit[:, None], glow, 0.0)
    canvas.labels[inside] = 0
    canvas.owner[inside] = 0


def paint_guardrail(canvas: Canvas, scene: Scene) -> None:
    """A galvanised steel guardrail along the road edge: bright in visible, and with an
    emissivity of ~0.3 it mirrors the cold sky in thermal (class 6)."""
    if scene.street.guardrail is None:
        return
    cam, cond = scene.cam, scene.cond
    gx, z0, z1 = scene.street.guardrail
    h, w = canvas.t_app.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    dx = xs - cam.center_x
    ok = (dx * gx) > 0
    z = np.where(ok, cam.focal * gx / np.where(ok, dx, 1.0), -1.0)
    wy = cam.height_m - (ys - cam.horizon) * z / cam.focal
    span = ok & (z >= z0) & (z <= z1)
    rail = span & (wy >= 0.45) & (wy <= 0.8)
    post = span & (np.mod(z, 2.0) < 0.15) & (wy >= 0) & (wy <= 0.8)
    inside = rail | post
    metal = (0.55, 0.57, 0.6)
    light = np.broadcast_to(
        _upright_light(cond, np.array([-np.sign(gx), 0.0, 0.0]), 1.0), (h, w, 3)
    )
    t_metal = cond.surface_temp(0.55, 0.6, 0.3)
    t_app = float(brightness_temperature(t_metal, 0.3, cond.t_reflected))
    albedo = (
        np.broadcast_to(np.array(metal), (h, w, 3))
        * np.where(rail & (np.mod(wy, 0.12) < 0.05), 0.75, 1.0)[..., None]
    )
    canvas.paint(
        (slice(None), slice(None)), inside.astype(np.float64), albedo, light, t_app, label=GUARDRAIL
    )
