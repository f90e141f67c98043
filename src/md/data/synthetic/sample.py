"""One sample: compose, draw and sense one frame, and annotate its pedestrians (bbGt boxes)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from md.data.synthetic.background import (
    paint_facades,
    paint_ground,
    paint_guardrail,
    paint_sky,
    paint_skyline,
)
from md.data.synthetic.canvas import Canvas
from md.data.synthetic.constants import DEFAULT_SIZE, KAIST_FIRST_SET, Array, Task
from md.data.synthetic.draw import draw_thing
from md.data.synthetic.noise import sample_rng
from md.data.synthetic.scene import (
    Scene,
    compose_detection,
    compose_segmentation,
    new_scene,
    sample_segmentation_street,
)
from md.data.synthetic.sensors import render_thermal, render_visible
from md.data.synthetic.things import Thing


@dataclass(frozen=True)
class Box:
    """One bbGt v3 box: `label` person or people; occlusion 0 none, 1 partial, 2 heavy."""

    label: str
    x: int
    y: int
    w: int
    h: int
    occlusion: int
    ignore: int
    appearance: str = ""  # `md data synth --appearance`: rare / common; "" when not asked

    def bbgt_line(self) -> str:
        return f"{self.label} {self.x} {self.y} {self.w} {self.h} {self.occlusion} 0 0 0 0 {self.ignore} 0"


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered frame. `labels` (MFNet classes) is filled for both tasks; `boxes`
    only for detection."""

    id: str
    group: str  # "day" or "night"
    visible: NDArray[np.uint8]  # (H, W, 3)
    thermal: NDArray[np.uint8]  # (H, W)
    labels: NDArray[np.uint8]  # (H, W), classes 0..8
    boxes: tuple[Box, ...]


def sample_id(task: Task, split: str, index: int) -> str:
    """KAIST ``setXX/V000/IZZZZZ`` or MFNet ``NNNNND``; day = even index, night = odd."""
    group = "day" if index % 2 == 0 else "night"
    if task == "detection":
        number = KAIST_FIRST_SET[(split, group)] + (index // 2) % 3
        return f"set{number:02d}/V000/I{index:05d}"
    offset = 0 if split == "train" else 50_000
    return f"{offset + index + 1:05d}{'D' if group == 'day' else 'N'}"


def render_sample(
    task: Task,
    seed: int,
    split: str,
    index: int,
    size: tuple[int, int] | None = None,
    appearance: str | None = None,
) -> SyntheticSample:
    """Render sample `index` of `split`: a pure function of its arguments.

    `appearance` ("rare" / "common", or None: not asked) dresses the frame's people
    (`make_person`) and is recorded on their boxes."""
    size = size or DEFAULT_SIZE[task]
    rng = sample_rng(seed, split, index)
    night = index % 2 == 1
    scene = new_scene(rng, task, size, night)
    scene.appearance = appearance
    if task == "detection":
        compose_detection(rng, scene)
    else:
        featured = 1 + index % 8
        scene.street = sample_segmentation_street(rng, scene.street, featured)
        compose_segmentation(rng, scene, featured)
    canvas, boxes = draw_scene(scene)
    visible = render_visible(canvas, scene.cond, rng)
    thermal = render_thermal(canvas, scene.cond, rng)
    group = "night" if night else "day"
    if appearance is not None:
        boxes = tuple(replace(b, appearance=appearance) for b in boxes)
    return SyntheticSample(
        sample_id(task, split, index),
        group,
        visible,
        thermal,
        canvas.labels.copy(),
        boxes if task == "detection" else (),
    )


def draw_scene(scene: Scene) -> tuple[Canvas, tuple[Box, ...]]:
    """Paint background then objects far to near; annotate pedestrians from the result."""
    h, w = scene.cam.height, scene.cam.width
    canvas = Canvas(h, w)
    paint_sky(canvas, scene)
    paint_skyline(canvas, scene)
    paint_ground(canvas, scene)
    paint_facades(canvas, scene)
    paint_guardrail(canvas, scene)
    things = sorted(scene.things, key=lambda t: -t.z)
    drawn = []
    for ident, thing in enumerate(things, start=1):
        thing.ident = ident
        result = draw_thing(canvas, scene, thing)
        if thing.annotate and result is not None:
            drawn.append((thing, *result))
    boxes = [box_of(canvas, t, win, cover) for t, win, cover in drawn]
    return canvas, tuple(b for b in boxes if b is not None)


def box_of(canvas: Canvas, thing: Thing, window: tuple[slice, slice], cover: Array) -> Box | None:
    """Tight box of the pixels the silhouette covers by half or more, with the occlusion
    level from how many of them a nearer object took (Caltech convention: partial up to
    35 % hidden, heavy up to 80 %; more hidden is not annotated)."""
    mask = cover >= 0.5
    if mask.sum() < 3:
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, x0 = window[0].start + rows[0], window[1].start + cols[0]
    bh, bw = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    if bh < 4:
        return None
    hidden = 1.0 - float((canvas.owner[window][mask] == thing.ident).mean())
    if hidden > 0.8:
        return None
    occlusion = 0 if hidden < 0.05 else (1 if hidden <= 0.35 else 2)
    people = thing.annotate == "people"
    return Box("people" if people else "person", int(x0), int(y0), bw, bh, occlusion, int(people))
