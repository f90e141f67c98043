"""KAIST multispectral pedestrian layout (detection).

::

    ROOT/images/setXX/VYYY/visible/IZZZZZ.{png,jpg}   RGB
    ROOT/images/setXX/VYYY/lwir/IZZZZZ.{png,jpg}      thermal, often stored as 3-channel gray
    ROOT/annotations/setXX/VYYY/IZZZZZ.txt            bbGt v3
    ROOT/{train,test,...}.txt or ROOT/imageSets/*.txt  optional lists of setXX/VYYY/IZZZZZ

Decisions:

- Groups follow the KAIST capture schedule: day = set00-02 and set06-08, night = set03-05
  and set09-11. Other set numbers (a user's own captures) get group ``unknown`` rather than
  an error, so they still load; per-group reports show them separately.
- Every listed image needs an annotation file (KAIST ships one per frame); a missing one is
  an error whose fix is an empty bbGt file. A file with only the header has zero boxes.
  Every annotation is parsed when the dataset opens, so a bad line stops a run at its start.
- bbGt lines are ``label x y w h occ vx vy vw vh ignore [angle]`` (the angle is optional).
  Boxes become xyxy = (x, y, x + w, y + h) in pixels, as the KAIST evaluator uses them.
- KAIST classes are ``person``, ``people`` (a crowd), ``cyclist`` and ``person?`` (unsure).
  Only ``person`` is a positive: ``box_ignore`` = ignore flag set or class != ``person``.
  Class names are kept per box in ``box_classes``.
- List entries may also be written ``set06_V001_I00459`` (the form of some KAIST tools).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from md.data.layout import (
    Item,
    PairedDataset,
    Sample,
    check_same_size,
    first_existing,
    load_gray,
    load_rgb,
    read_list,
)
from md.errors import DataError

KAIST_ID = re.compile(r"(set\d{2})[/_](V\d{3})[/_](I\d{5})")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DAY_SETS = frozenset({0, 1, 2, 6, 7, 8})
NIGHT_SETS = frozenset({3, 4, 5, 9, 10, 11})
POSITIVE_CLASS = "person"
EMPTY_BBGT_HINT = "% bbGt version=3"


def kaist_group(sample_id: str) -> str:
    """``day`` / ``night`` from the set number of ``setXX/...``; ``unknown`` otherwise."""
    number = int(sample_id[3:5])
    if number in DAY_SETS:
        return "day"
    return "night" if number in NIGHT_SETS else "unknown"


def find_ids(root: Path) -> list[str]:
    """Sorted ids of every frame under ``images/setXX/VYYY/{visible,lwir}/``.

    Both modality folders are scanned so that a frame present in only one of them is
    reported as a missing file rather than silently skipped.
    """
    ids = set()
    for suffix in IMAGE_SUFFIXES:
        for path in (root / "images").glob(f"set*/V*/*/I*{suffix}"):
            if path.parent.name not in ("visible", "lwir"):
                continue
            candidate = f"{path.parts[-4]}/{path.parts[-3]}/{path.stem}"
            if KAIST_ID.fullmatch(candidate):
                ids.add(candidate)
    if not ids:
        raise DataError(
            f"{root / 'images'}: no frames found; expected images/setXX/VYYY/visible/IZZZZZ.png"
        )
    return sorted(ids)


def resolve_sample(root: Path, sample_id: str, where: str) -> Sample:
    """Locate one frame's three files; `where` says which list line asked for it."""
    set_name, video, frame = sample_id.split("/")
    folder = root / "images" / set_name / video
    visible = first_existing(folder / "visible" / frame, IMAGE_SUFFIXES)
    thermal = first_existing(folder / "lwir" / frame, IMAGE_SUFFIXES)
    if visible is None and thermal is None:
        raise DataError(
            f"{where}: {sample_id!r} not found (no {folder / 'visible' / frame}.png or .jpg); "
            "fix the entry or add the images"
        )
    if visible is None or thermal is None:
        present, missing = (visible, "lwir") if thermal is None else (thermal, "visible")
        assert present is not None
        raise DataError(
            f"{folder / missing / frame}{present.suffix}: missing {missing} image for "
            f"{sample_id} ({present} exists); add it, or leave the frame out with a list file"
        )
    annotation = root / "annotations" / set_name / video / f"{frame}.txt"
    if not annotation.is_file():
        raise DataError(
            f"{annotation}: missing annotation for {sample_id}; if the frame has no people, "
            f"add a file holding only the header line '{EMPTY_BBGT_HINT}'"
        )
    return Sample(sample_id, kaist_group(sample_id), visible, thermal, annotation)


def parse_bbgt(path: Path) -> Item:
    """Boxes of one bbGt v3 file: ``boxes`` (N, 4) xyxy float32, ``box_ignore`` (N,) bool,
    ``box_occlusion`` (N,) int64, ``box_classes`` list[str]."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation ({e}); re-save it as text") from e
    boxes, ignore, occlusion, classes = [], [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("%"):  # header / comments
            continue
        label, xywh, occ, ign = _parse_bbgt_line(path, number, line)
        x, y, w, h = xywh
        boxes.append([x, y, x + w, y + h])
        ignore.append(ign != 0 or label != POSITIVE_CLASS)
        occlusion.append(occ)
        classes.append(label)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "box_ignore": torch.tensor(ignore, dtype=torch.bool),
        "box_occlusion": torch.tensor(occlusion, dtype=torch.int64),
        "box_classes": classes,
    }


def _parse_bbgt_line(
    path: Path, number: int, line: str
) -> tuple[str, tuple[float, float, float, float], int, int]:
    """(label, (x, y, w, h), occlusion, ignore) of one bbGt line, or a `DataError`."""
    fields = line.split()
    fix = "expected 'label x y w h occ vx vy vw vh ignore [angle]' (bbGt v3)"
    if len(fields) not in (11, 12):
        raise DataError(f"{path} line {number}: {len(fields)} fields in {line!r}; {fix}")
    try:
        x, y, w, h = (float(v) for v in fields[1:5])
        for v in fields[6:10] + fields[11:]:  # visible box and angle: checked, not used
            float(v)
        occ, ign = int(fields[5]), int(fields[10])
    except ValueError as e:
        raise DataError(f"{path} line {number}: bad number in {line!r}; {fix}") from e
    if w <= 0 or h <= 0:
        raise DataError(
            f"{path} line {number}: box width/height must be positive in {line!r}; "
            "fix or delete the line"
        )
    return fields[0], (x, y, w, h), occ, ign


class KaistDataset(PairedDataset):
    """KAIST-layout pairs with bbGt boxes; items as in docs/internals.md plus ``box_classes``."""

    layout = "kaist"
    task = "detection"
    list_dirs = (".", "imageSets")

    @classmethod
    def open(cls, root: Path, split: str | None, list_file: Path | None) -> KaistDataset:
        """Resolve every sample's files now and parse every annotation, so a bad bbGt line
        is refused before a run starts rather than when it reaches that frame (the text
        files are small: 0.16 s for 2,252 files of 3 boxes on a 2-core Xeon); images load lazily."""
        if list_file is None:
            samples = [resolve_sample(root, i, str(root)) for i in find_ids(root)]
        else:
            samples = [
                resolve_sample(root, _normalise_id(list_file, n, e), f"{list_file} line {n}")
                for n, e in read_list(list_file)
            ]
        for sample in samples:
            parse_bbgt(sample.target_path)
        return cls(root, samples, split, list_file)

    def load(self, sample: Sample) -> Item:
        visible = load_rgb(sample.visible_path, self.decoded)  # (3, H, W)
        thermal = load_gray(sample.thermal_path, self.decoded)  # (1, H, W)
        check_same_size(visible, sample.visible_path, thermal, sample.thermal_path)
        item: Item = {"id": sample.id, "group": sample.group}
        item.update(visible=visible, thermal=thermal, **parse_bbgt(sample.target_path))
        return item


def _normalise_id(list_file: Path, number: int, entry: str) -> str:
    """``set06/V001/I00459`` from a list entry (``_`` separators and suffixes tolerated)."""
    match = KAIST_ID.fullmatch(Path(entry).with_suffix("").as_posix() if "." in entry else entry)
    if match is None:
        raise DataError(
            f"{list_file} line {number}: {entry!r} is not a KAIST id; write it like "
            "set06/V001/I00459"
        )
    return "/".join(match.groups())


__all__ = ["KaistDataset", "find_ids", "kaist_group", "parse_bbgt"]
