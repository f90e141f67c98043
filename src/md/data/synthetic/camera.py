"""The camera and the conditions of one frame: illumination, air and sky temperatures, and
the heat balance of passive surfaces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from md.data.synthetic.constants import KELVIN, RGB, Array


@dataclass(frozen=True)
class Camera:
    """Level pinhole camera; image x right, y down; world X right, Y up, Z forward (m)."""

    width: int
    height: int
    focal: float  # px; ~62° horizontal field of view, like KAIST
    horizon: float  # image row of the horizon
    center_x: float  # image column of the vanishing point
    height_m: float  # camera height above the ground (car roof rack)

    def scale(self, z: float) -> float:
        """Pixels per metre at distance `z`."""
        return self.focal / z

    def foot_row(self, z: float) -> float:
        """Image row where the ground at distance `z` appears."""
        return self.horizon + self.focal * self.height_m / z

    def ground(self, x: Array, y: Array) -> tuple[Array, Array]:
        """World (X, Z) of the ground seen at pixel (x, y); only valid below the horizon."""
        z = self.focal * self.height_m / np.maximum(y - self.horizon, 1e-6)
        return (x - self.center_x) * z / self.focal, z


@dataclass(frozen=True)
class Conditions:
    """Illumination and heat balance of one frame (day or night)."""

    night: bool
    t_air: float  # °C
    t_sky: float  # °C, brightness temperature of the clear sky at zenith (far below air)
    sun: float  # direct irradiance on a surface facing the sun (0 at night)
    ambient: float  # diffuse irradiance: sky by day, moon + city glow by night
    sun_dir: tuple[float, float, float]  # unit vector towards the sun (X, Y, Z)
    solar_heating: float  # K above air of a black, sunlit, horizontal surface
    stored_heat: float  # K above air that asphalt still holds at night (thermal mass)
    sun_rgb: RGB = (1.0, 0.96, 0.9)
    ambient_rgb: RGB = (0.8, 0.88, 1.0)

    def sky_temp(self, elevation: Array | float) -> Array:
        """Brightness temperature (°C) of the clear sky at `elevation` (radians).

        The atmosphere's emissivity grows with the path length 1/sin(elevation):
        eps(e) = 1 - (1 - eps_zenith)^(1/sin e), so the sky is coldest at zenith and nearly
        at air temperature just above the horizon, where most of a street camera's sky is.
        """
        t_air = self.t_air + KELVIN
        eps_zenith = ((self.t_sky + KELVIN) / t_air) ** 4
        sin_e = np.clip(np.sin(np.asarray(elevation, dtype=np.float64)), 0.02, 1.0)
        eps = 1 - (1 - eps_zenith) ** (1 / sin_e)
        return np.asarray(eps**0.25 * t_air - KELVIN)

    @cached_property
    def t_reflected(self) -> float:
        """What an upright surface reflects: half sky (seen ~30° up), half surroundings."""
        return 0.5 * (float(self.sky_temp(0.5)) + self.t_air)

    def surface_temp(
        self, albedo: Array | float, insolation: Array | float, mass: Array | float = 1.0
    ) -> Array:
        """Physical temperature (°C) of a passive surface (arguments broadcast).

        By day, absorbed sunlight (1 - albedo) x insolation (1 = facing the sun, unshaded;
        15 % comes as diffuse sky light even in shade) heats it by up to `solar_heating`
        above air, more for massive surfaces that do not shed heat to the wind. By night,
        massive surfaces (asphalt, walls) still hold `stored_heat` x mass while light, thin
        ones cool below air by radiating to the cold sky.
        """
        albedo, insolation, mass = (
            np.asarray(a, dtype=np.float64) for a in (albedo, insolation, mass)
        )
        if self.night:
            return self.t_air + self.stored_heat * mass - 1.5 * (1 - mass)
        gain = self.solar_heating * (1 - albedo) * (0.15 + 0.85 * insolation)
        return self.t_air + gain * (0.5 + 0.5 * mass)


def sample_conditions(rng: np.random.Generator, night: bool) -> Conditions:
    """Weather and time of day: warm sunny afternoons or cool clear nights (KAIST-like)."""
    if night:
        t_air = rng.uniform(8, 20)
        return Conditions(
            night=True,
            t_air=t_air,
            t_sky=t_air - rng.uniform(25, 40),
            sun=0.0,
            ambient=rng.uniform(0.001, 0.004),
            sun_dir=(0.0, -1.0, 0.0),
            solar_heating=0.0,
            stored_heat=rng.uniform(1, 4),
            ambient_rgb=(0.9, 0.8, 0.7),
        )
    elevation = rng.uniform(0.35, 1.0)  # 20°..57°
    azimuth = rng.uniform(-2.6, 2.6)  # sun anywhere but straight ahead (no lens flare)
    sun_dir = (
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
        -math.cos(elevation) * math.cos(azimuth),  # cos>0: sun behind the camera
    )
    t_air = rng.uniform(18, 30)
    return Conditions(
        night=False,
        t_air=t_air,
        t_sky=t_air - rng.uniform(20, 35),
        sun=rng.uniform(0.75, 1.0),
        ambient=rng.uniform(0.25, 0.35),
        sun_dir=sun_dir,
        solar_heating=rng.uniform(22, 34),
        stored_heat=0.0,
    )


def sample_camera(rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """A roof-mounted camera with a slightly random pitch (horizon row) and heading."""
    width, height = size
    return Camera(
        width=width,
        height=height,
        focal=width / (2 * math.tan(math.radians(31))),
        horizon=height * rng.uniform(0.38, 0.46),
        center_x=width * rng.uniform(0.42, 0.58),
        height_m=rng.uniform(1.8, 2.2),
    )
