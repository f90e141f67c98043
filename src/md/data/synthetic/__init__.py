"""Synthetic visible + thermal datasets in the KAIST (detection) and MFNet (segmentation) layouts.

The generator renders street scenes from a small physical model instead of drawing shapes
on noise, so that the effects Modality Distillation is about can show on it:

- **Geometry.** A level pinhole camera ~2 m above the road looks down a street. The
  ground, the building facades and the far end of the street are planes; objects (people,
  cars, poles, trees, cones, ...) are upright billboards standing on the ground at a
  distance Z, drawn far to near. Image size falls as 1/Z, so objects near the horizon are
  small: a 1.7 m person 30 m away is ~7 px tall at 160x128, and vanishes when the thermal
  image is downsampled by 8 per side.
- **Visible.** Radiance = albedo x illuminance + emission. By day the sun (with cast
  shadows from facades and objects) and the sky light the scene; by night only a faint
  ambient, street lamps (inverse-square pools), the ego car's headlights (bright near,
  dark far) and emitters (lamp heads, lit windows, car lights). A camera model with auto
  exposure and a gain limit, shot + read noise amplified by the gain, glare around
  saturated emitters, vignetting and a 2.2 gamma makes night frames dark, noisy and
  low-contrast, and day frames bright and textured (with camouflaged clothing and
  person-like posts and posters that have no thermal signature).
- **Thermal.** Each surface has a physical temperature (air temperature + solar heating
  absorbed by dark, sunlit surfaces + heat stored by the ground at night; ~33 °C skin,
  clothing between skin and air, warm engines and tyres, hot lamp heads) and an
  emissivity; the sensor sees the brightness temperature
  ``(eps T^4 + (1 - eps) T_reflected^4)^(1/4)`` (bare metal, glass and puddles mirror the
  cold sky). Sun-heated roads and walls make people low-contrast (or darker than the road)
  by day; cool backgrounds make them stand out at night. The microbolometer model blurs
  (optics), adds temporal (NETD) and column fixed-pattern noise and applies automatic gain
  control (plateau histogram equalisation mixed with a linear stretch, as in FLIR cores)
  before 8-bit quantisation.

Samples are independent random streams seeded from ``(seed, split, index)``, so sample i is
the same whatever the dataset size, and the written files are byte-identical for the same
arguments. docs/synthetic.md describes the model, its parameters and what each effect tests.

The modules, in dependency order (each imports only from those above it):

- `constants`: version, sizes, splits, MFNet class ids, array type aliases
- `noise`: per-sample random streams, value noise, Gaussian blur, grey-body radiometry
- `camera`, `street`: the pinhole camera, the frame's conditions, the street and its facades
- `canvas`: per-pixel surface properties, composited far to near
- `things`, `people`, `vehicles`, `roadside`: objects as upright billboards, by kind
- `lights`: night lights, sky and sun on upright surfaces, cast shadows
- `scene`: what one frame holds and where its objects are placed
- `background`, `draw`: painting the background and rasterising the objects
- `sensors`: the visible camera and the thermal microbolometer
- `sample`: one rendered, annotated frame
- `writer`: `md data synth`: the dataset folder and synthetic.json
"""

from md.data.synthetic.camera import sample_conditions
from md.data.synthetic.constants import CAR, CONE, DEFAULT_SIZE, PERSON, Task
from md.data.synthetic.people import make_person
from md.data.synthetic.roadside import make_poster
from md.data.synthetic.sample import SyntheticSample, render_sample
from md.data.synthetic.writer import SynthConfig, run

__all__ = [
    "CAR",
    "CONE",
    "DEFAULT_SIZE",
    "PERSON",
    "SynthConfig",
    "SyntheticSample",
    "Task",
    "make_person",
    "make_poster",
    "render_sample",
    "run",
    "sample_conditions",
]
