"""`md predict`: run a model (checkpoint or exported file) on camera frames, with a thermal
health check and an optional visible-only backup.

Frames come from a dataset split (``--data``), one pair of files, or two folders paired by
file name (``--visible-dir`` / ``--thermal-dir``). Each frame's thermal is checked
(`md.deploy.health`); a healthy frame is served by MODEL, an unhealthy one by the backup
(``--fallback``, a visible-only student) or by nobody, and its record says which and why.

OUT (written into a temporary folder beside it and renamed at the end, so it appears whole
or not at all) holds:

- ``frames.jsonl``: one record per frame in input order: index (1-based), id, files,
  ``health`` / ``detail``, ``served_by`` (``primary`` / ``fallback`` / null) and ``model``;
  detections (``boxes`` xyxy px, ``scores``) or the prediction PNG's name;
- detection: ``results.txt``, a KAIST results file (frames numbered 1.. in input order;
  score it with ``md evaluate kaist-results``); segmentation: ``pred/ID.png``, class
  indices 0..8 in the MFNet palette (``md evaluate mfnet-predictions`` reads them);
- ``overlays/``: the first N frames drawn with their predictions;
- ``summary.json``: the models, counts per health reason and per server, frames/s, and
  with ``--score`` (``--data`` only) the metric of `md evaluate model` over all frames
  (a frame nobody served counts as predicting nothing: no boxes, class 0 everywhere).

Thermal may be given at the camera's low resolution or at full size (then reduced as in
training); another size is a one-line error. ``simulate_failures`` breaks the thermal of a
seeded share of frames (in blocks of 4 frames: dead, missing or frozen) to measure the
fallback; it is for that experiment only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from md.data import open_dataset
from md.data.inspect import MFNET_PALETTE
from md.data.layout import SIXTEEN_BIT_MODES, read_image
from md.deploy.checkpoint import thermal_sizes
from md.deploy.health import Health, HealthConfig, ThermalMonitor, serve
from md.deploy.loader import open_predictor
from md.deploy.runtime import Predictor
from md.errors import DataError, MdError, disk_error
from md.eval import mfnet
from md.eval.model_eval import _score_detection
from md.progress import progress_bar

VISIBLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
THERMAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
_GREY_MODES = {"L", "RGB", "RGBA", "LA", "P", "RGBX"}  # thermal: converted to L as md.data does
FAILURE_KINDS = ("dead", "missing", "frozen")
FAILURE_BLOCK = 4  # frames per simulated failure episode
OVERLAY_MIN_SCORE = 0.3  # default score from which boxes are drawn on overlays
AGREE_MIN_SCORE = 0.3  # default score from which detections count in the agreement
AGREE_IOU = 0.5


@dataclass(frozen=True)
class PredictConfig:
    model: str
    out: str
    data: str | None = None
    split: str = "test"
    visible: str | None = None
    thermal: str | None = None
    visible_dir: str | None = None
    thermal_dir: str | None = None
    fallback: str | None = None
    overlays: int = 0
    batch_size: int = 8
    device: str = "cpu"
    health: HealthConfig = field(default_factory=HealthConfig)
    check_health: bool = True  # False: serve every frame with MODEL (missing thermal -> zeros)
    simulate_failures: float = 0.0
    seed: int = 0
    score: bool = False
    shadow: bool = False  # the fallback also predicts healthy frames: agreement, not served
    agree_score: float = AGREE_MIN_SCORE
    overlay_score: float = OVERLAY_MIN_SCORE
    progress: bool = True


@dataclass
class Frame:
    id: str
    visible: np.ndarray  # uint8 (3, H, W)
    thermal: np.ndarray | None  # (1, h, w) as read (uint8, uint16 or float); None: none
    thermal_error: str | None = None  # "missing: ..." / "unreadable: ..." when thermal is None
    visible_path: str | None = None
    thermal_path: str | None = None
    target: dict[str, Any] | None = None  # ground truth (--data): boxes... or labels
    group: str = "unknown"
    simulated: str | None = None  # the failure `simulate` gave this frame's thermal


# --- reading frames ---------------------------------------------------------------------------


def read_visible(path: Path) -> np.ndarray:
    """An 8-bit visible image -> uint8 (3, H, W) (gray and RGBA converted as md.data does)."""
    img = read_image(path)
    if img.mode not in _GREY_MODES | {"CMYK", "YCbCr"}:
        raise DataError(
            f"{path}: visible image has mode {img.mode}; save it as an 8-bit RGB PNG or JPEG"
        )
    return np.ascontiguousarray(np.asarray(img.convert("RGB")).transpose(2, 0, 1))


def read_thermal(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(frame (1, h, w), None), or (None, "missing: ..." / "unreadable: ...") for a thermal
    file that is not there or does not decode (a health condition, not an error). A file of
    a mode that is not a thermal image is a `DataError`."""
    if not path.is_file():
        return None, f"missing: {path}"
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # truncated, not an npy, pickled objects
            return None, f"unreadable: {path}: {type(e).__name__}"
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2 or not (a.dtype in (np.uint8, np.uint16) or a.dtype.kind == "f"):
            raise DataError(
                f"{path}: thermal array is {a.dtype} {a.shape}; save one (H, W) frame as "
                "uint8, uint16 or float in [0, 1]"
            )
        return a[None], None
    try:
        img = read_image(path)
    except DataError as e:
        return None, f"unreadable: {e}"
    if img.mode in SIXTEEN_BIT_MODES:  # the modes md.data reads as 16-bit
        a = np.asarray(img, dtype=np.uint16)
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
    elif img.mode in _GREY_MODES:
        a = np.asarray(img.convert("L"))
    else:
        raise DataError(
            f"{path}: thermal image has mode {img.mode}; save it as an 8-bit (or 16-bit) gray PNG"
        )
    return np.ascontiguousarray(a)[None], None


def to_uint8(thermal: np.ndarray) -> np.ndarray:
    """A thermal frame as 8 bits: uint16 / 257, float in [0, 1] x 255 (NaN -> 0), rounded."""
    if thermal.dtype == np.uint8:
        return thermal
    if thermal.dtype == np.uint16:
        return np.round(thermal.astype(np.float64) / 257.0).astype(np.uint8)
    clean = np.nan_to_num(thermal.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(clean, 0.0, 1.0) * 255.0).astype(np.uint8)


def dataset_frames(data: str, split: str, task: str) -> tuple[list[Any], Iterator[Frame]]:
    """Frames of a dataset split (8-bit, as stored) with their ground truth."""
    ds = open_dataset(data, split=split)
    if ds.task != task:
        raise MdError(
            f"{data}: a {ds.layout}-layout {ds.task} dataset, but the model is for {task}; "
            f"pass a {task} model or a {task} dataset"
        )

    def frames() -> Iterator[Frame]:
        for sample in ds.samples:
            item = ds.load(sample)
            target = (
                {k: item[k] for k in ("boxes", "box_ignore", "box_occlusion")}
                if task == "detection"
                else {"labels": item["labels"]}
            )
            yield Frame(
                id=item["id"],
                visible=_as_uint8(item["visible"]),
                thermal=_as_uint8(item["thermal"]),
                visible_path=str(sample.visible_path),
                thermal_path=str(sample.thermal_path),
                target=target,
                group=item["group"],
            )

    return list(ds.samples), frames()


def _as_uint8(t: torch.Tensor) -> np.ndarray:
    """md.data's float image (k / 255) back to the stored 8-bit values, exactly."""
    return (t * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def folder_pairs(visible_dir: Path, thermal_dir: Path) -> list[tuple[Path, Path]]:
    """(visible, thermal) files paired by name; a visible frame without thermal is kept
    (its thermal is ``missing``), a thermal file without visible is an error."""
    for d, role in ((visible_dir, "--visible-dir"), (thermal_dir, "--thermal-dir")):
        if not d.is_dir():
            raise MdError(f"{d}: {role} folder not found; pass an existing folder")
    visible = sorted(p for p in visible_dir.iterdir() if p.suffix.lower() in VISIBLE_SUFFIXES)
    if not visible:
        raise MdError(
            f"{visible_dir}: no visible images (*{', *'.join(VISIBLE_SUFFIXES)}); pass the "
            "folder that holds them"
        )
    thermal: dict[str, Path] = {}
    for p in sorted(thermal_dir.iterdir()):
        if p.suffix.lower() in THERMAL_SUFFIXES:
            if p.stem in thermal:
                raise MdError(
                    f"{p}: two thermal files for frame {p.stem!r} ({thermal[p.stem].name}); "
                    "keep one"
                )
            thermal[p.stem] = p
    stems = {p.stem for p in visible}
    if len(stems) != len(visible):
        raise MdError(f"{visible_dir}: two visible files share a name; keep one per frame")
    orphans = sorted(set(thermal) - stems)
    if orphans:
        raise MdError(
            f"{thermal[orphans[0]]}: thermal frame without a visible image in {visible_dir} "
            f"({len(orphans)} such); add the visible image or remove the thermal file"
        )
    if not any(p.stem in thermal for p in visible):
        raise MdError(
            f"{thermal_dir}: no thermal file matches any visible image by name (e.g. "
            f"{visible[0].stem}.png); pass the folder of the paired thermal frames"
        )
    return [(p, thermal.get(p.stem, thermal_dir / f"{p.stem}.png")) for p in visible]


def file_frames(pairs: Sequence[tuple[Path, Path]]) -> Iterator[Frame]:
    for v, t in pairs:
        thermal, error = read_thermal(t)
        yield Frame(
            id=v.stem,
            visible=read_visible(v),
            thermal=thermal,
            thermal_error=error,
            visible_path=str(v),
            thermal_path=str(t),
        )


# --- simulated sensor failures ------------------------------------------------------------


def failure_plan(n: int, fraction: float, seed: int) -> dict[int, str]:
    """Frame index -> failure kind for round(fraction * n) frames, in episodes of
    `FAILURE_BLOCK` consecutive frames at seeded places, kinds drawn from `FAILURE_KINDS`."""
    if not 0 <= fraction <= 0.9:
        raise MdError(f"simulated failure fraction must be in [0, 0.9], got {fraction}")
    target = round(fraction * n)
    if target == 0:
        return {}
    rng = np.random.default_rng(seed)
    slots = n // FAILURE_BLOCK
    blocks = math.ceil(target / FAILURE_BLOCK)
    if blocks > slots:
        raise MdError(f"{n} frames are too few to fail {target} of them in blocks of 4")
    starts = np.sort(rng.choice(slots, size=blocks, replace=False)) * FAILURE_BLOCK
    kinds = rng.integers(0, len(FAILURE_KINDS), size=blocks)
    plan: dict[int, str] = {}
    for start, kind in zip(starts, kinds, strict=True):
        for i in range(int(start), int(start) + FAILURE_BLOCK):
            if len(plan) < target:
                plan[i] = FAILURE_KINDS[int(kind)]
    return plan


def simulate(frames: Iterator[Frame], plan: dict[int, str]) -> Iterator[Frame]:
    """Apply `plan`: dead -> zeros, missing -> no file, frozen -> the thermal of the frame
    before the episode, repeated."""
    previous: np.ndarray | None = None
    frozen: np.ndarray | None = None
    for i, f in enumerate(frames):
        kind = plan.get(i)
        f.simulated = kind
        original = f.thermal
        if kind != "frozen":
            frozen = None
        if kind == "dead" and f.thermal is not None:
            f.thermal = np.zeros_like(f.thermal)
        elif kind == "missing":
            f.thermal, f.thermal_error = None, "missing: simulated failure"
        elif kind == "frozen":
            if frozen is None:
                frozen = previous if previous is not None else original
            f.thermal = None if frozen is None else frozen.copy()
        previous = original
        yield f


# --- output folder ------------------------------------------------------------------------


class Output:
    """Writes into ``.NAME.tmp-PID`` beside OUT; `commit` renames it to OUT."""

    def __init__(
        self, out: Path, task: str, overlays: int, overlay_score: float = OVERLAY_MIN_SCORE
    ) -> None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise MdError(f"{out}: output exists and is not an empty folder; pass a new --out")
        self.out, self.task, self.overlays = out, task, overlays
        self.overlay_score = overlay_score
        self.tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.tmp.mkdir(parents=True)
        except OSError as e:
            raise disk_error(e, self.tmp, "the output folder") or e from None
        self.records = open(self.tmp / "frames.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        self.detections: list[tuple[np.ndarray, np.ndarray]] = []
        self.index = 0

    def add(
        self,
        frame: Frame,
        health: Health,
        served_by: str | None,
        model: str | None,
        pred: Any,
        agree: tuple[int, int] | None = None,
    ) -> None:
        self.index += 1
        rec: dict[str, Any] = {
            "index": self.index,
            "id": frame.id,
            "visible": frame.visible_path,
            "thermal": frame.thermal_path,
            "health": health.reason,
            "detail": health.detail,
            "served_by": served_by,
            "model": model,
        }
        if frame.simulated is not None:
            rec["simulated"] = frame.simulated
        if agree is not None:
            rec["agreement"] = agree[0] / agree[1] if agree[1] else 1.0
        if self.task == "detection":
            boxes = np.zeros((0, 4), np.float32) if pred is None else pred["boxes"]
            scores = np.zeros(0, np.float32) if pred is None else pred["scores"]
            self.detections.append((boxes, scores))
            rec["boxes"] = [[round(float(v), 4) for v in b] for b in boxes]
            rec["scores"] = [round(float(s), 8) for s in scores]
        elif pred is not None:
            name = f"pred/{frame.id}.png"
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.ascontiguousarray(pred), mode="P")
            img.putpalette(MFNET_PALETTE.reshape(-1).tolist())
            img.save(path)
            rec["prediction"] = name
        self.records.write(json.dumps(rec) + "\n")
        if self.index <= self.overlays:
            self._overlay(frame, health, served_by, pred)

    def _overlay(self, frame: Frame, health: Health, served_by: str | None, pred: Any) -> None:
        img = Image.fromarray(np.ascontiguousarray(frame.visible.transpose(1, 2, 0)), mode="RGB")
        if pred is not None and self.task == "segmentation":
            colours = Image.fromarray(MFNET_PALETTE[np.clip(pred, 0, 8)], mode="RGB")
            img = Image.blend(img, colours, 0.5)
        draw = ImageDraw.Draw(img)
        colour = (0, 255, 0) if served_by == "primary" else (255, 160, 0)
        if pred is not None and self.task == "detection":
            for box, score in zip(pred["boxes"], pred["scores"], strict=True):
                if score >= self.overlay_score:
                    x1, y1, x2, y2 = (float(v) for v in box)
                    draw.rectangle([x1, y1, x2, y2], outline=colour)
                    draw.text((x1 + 1, y1 + 1), f"{score:.2f}", fill=colour)
        label = served_by or f"not predicted: {health.reason}"
        draw.text((2, 2), label if health.ok else f"{label} ({health.reason})", fill=colour)
        folder = self.tmp / "overlays"
        folder.mkdir(exist_ok=True)
        img.save(folder / f"{self.index:05d}_{frame.id.replace('/', '_')}.png")

    def commit(self, summary: dict[str, Any]) -> None:
        self.records.close()
        if self.task == "detection":
            from md.eval.kaist import ImageDetections, write_results

            write_results(
                self.tmp / "results.txt", [ImageDetections(b, s) for b, s in self.detections]
            )
        (self.tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.out.exists():
            self.out.rmdir()  # empty (checked at the start)
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        self.records.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the run ------------------------------------------------------------------------------


def open_models(cfg: PredictConfig) -> tuple[Predictor, Predictor | None]:
    primary = open_predictor(cfg.model, device=cfg.device)
    if cfg.fallback is None:
        return primary, None
    backup = open_predictor(cfg.fallback, device=cfg.device)
    if backup.info.task != primary.info.task:
        raise MdError(
            f"{cfg.fallback}: the fallback is a {backup.info.task} model but {cfg.model} is "
            f"for {primary.info.task}; pass a {primary.info.task} visible-only student"
        )
    if backup.info.uses_thermal:
        raise MdError(
            f"{cfg.fallback}: the fallback must see no thermal (it serves frames whose thermal "
            "failed); train it with `md train-student --thermal-factor none`"
        )
    return primary, backup


def frames_of(cfg: PredictConfig, task: str) -> tuple[int, Iterator[Frame]]:
    chosen = [
        name
        for name, given in (
            ("--data", cfg.data),
            ("--visible/--thermal", cfg.visible or cfg.thermal),
            ("--visible-dir/--thermal-dir", cfg.visible_dir or cfg.thermal_dir),
        )
        if given
    ]
    if len(chosen) != 1:
        raise MdError(
            "give exactly one input: --data DATASET, --visible V.png --thermal T.png, or "
            f"--visible-dir DIR --thermal-dir DIR (got {', '.join(chosen) or 'none'})"
        )
    if cfg.data is not None:
        samples, frames = dataset_frames(cfg.data, cfg.split, task)
        return len(samples), frames
    if cfg.score:
        raise MdError("--score needs --data (the ground truth of a dataset split)")
    if cfg.visible_dir or cfg.thermal_dir:
        if not (cfg.visible_dir and cfg.thermal_dir):
            raise MdError("--visible-dir and --thermal-dir go together; pass both")
        pairs = folder_pairs(Path(cfg.visible_dir), Path(cfg.thermal_dir))
    else:
        if not (cfg.visible and cfg.thermal):
            raise MdError("--visible and --thermal go together; pass both files")
        if not Path(cfg.visible).is_file():
            raise MdError(f"{cfg.visible}: visible image not found; check the path")
        pairs = [(Path(cfg.visible), Path(cfg.thermal))]
    return len(pairs), file_frames(pairs)


def run(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every frame; returns the summary also written to OUT/summary.json."""
    if cfg.overlays < 0 or cfg.batch_size < 1:
        raise MdError("--overlays must be >= 0 and --batch-size >= 1")
    primary, backup = open_models(cfg)
    task = primary.info.task
    n, frames = frames_of(cfg, task)
    if cfg.simulate_failures:
        frames = simulate(frames, failure_plan(n, cfg.simulate_failures, cfg.seed))
    out = Output(Path(cfg.out), task, cfg.overlays, cfg.overlay_score)
    monitor = ThermalMonitor(cfg.health)
    names = {"primary": Path(cfg.model).name, "fallback": Path(cfg.fallback or "-").name}
    reasons: Counter[str] = Counter()
    served: Counter[str] = Counter()
    scored: list[Scored] = []  # ground truth and prediction only (no images kept)
    agreed = [0, 0]  # (agreeing, compared) detections or pixels over the shadowed frames
    t0 = time.perf_counter()
    bar = progress_bar(total=n, desc="predict", unit="frame", disable=not cfg.progress)
    try:
        for chunk in _chunks(frames, cfg.batch_size):
            checks = [_check(f, monitor, primary) for f in chunk]
            who = [
                "primary"
                if not cfg.check_health
                else serve(h, primary.info.uses_thermal, backup is not None)
                for h in checks
            ]
            preds = _predict_chunk(chunk, who, primary, backup)
            shadow: list[Any] = [None] * len(chunk)
            if cfg.shadow and backup is not None:
                healthy: list[str | None] = ["fallback" if h.ok else None for h in checks]
                shadow = _predict_chunk(chunk, healthy, primary, backup)
            for f, h, w, p, b in zip(chunk, checks, who, preds, shadow, strict=True):
                reasons[h.reason] += 1
                served[w or "none"] += 1
                agree = None
                if b is not None and p is not None and w == "primary":
                    agree = agreement_counts(task, p, b, cfg.agree_score)
                    agreed[0] += agree[0]
                    agreed[1] += agree[1]
                out.add(f, h, w, names.get(w or ""), p, agree)
                if cfg.score:
                    scored.append(Scored(f.id, f.group, f.visible.shape[-2:], f.target or {}, p))
            bar.update(len(chunk))
        seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {
            "frames": out.index,
            "seconds": round(seconds, 3),
            "frames_per_s": round(out.index / seconds, 2) if seconds > 0 else None,
            "health": dict(reasons),
            "served": dict(served),
            "model": _describe(primary),
            "fallback": _describe(backup) if backup is not None else None,
            "health_config": vars(cfg.health),
            "check_health": cfg.check_health,
            "simulated_failures": cfg.simulate_failures or None,
            "seed": cfg.seed,
        }
        if cfg.score:
            summary["metric"] = score(task, scored)
        if cfg.shadow and backup is not None:
            summary["agreement"] = {
                "value": agreed[0] / agreed[1] if agreed[1] else None,
                "compared": agreed[1],
                "frames": reasons["ok"],
                "of": "pixels with the same class"
                if task == "segmentation"
                else f"detections (score >= {cfg.agree_score}) matched at IoU >= {AGREE_IOU}, "
                "2 x matched / (both counts)",
            }
        out.commit(summary)
    except BaseException:
        out.abort()
        raise
    finally:
        bar.close()
    summary["out"] = str(out.out)
    return summary


def _describe(p: Predictor) -> dict[str, Any]:
    i = p.info
    return {
        "file": i.source,
        "sha256": i.sha256,
        "format": i.format,
        "task": i.task,
        "thermal_factor": i.thermal_factor if i.uses_thermal else "none",
        "kind": i.meta.get("model_kind"),
    }


def _chunks(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    chunk: list[Frame] = []
    for f in frames:
        if chunk and (len(chunk) == size or f.visible.shape != chunk[0].visible.shape):
            yield chunk
            chunk = []
        chunk.append(f)
    if chunk:
        yield chunk


def _check(frame: Frame, monitor: ThermalMonitor, primary: Predictor) -> Health:
    """The frame's health; a frame of a size the model cannot take is an error."""
    image = (int(frame.visible.shape[-2]), int(frame.visible.shape[-1]))
    fixed = primary.info.image_size
    if fixed is not None and (int(fixed[0]), int(fixed[1])) != image:
        raise MdError(
            f"{frame.visible_path}: visible frame is {image[1]}x{image[0]} but "
            f"{Path(primary.info.source).name} was exported for {fixed[1]}x{fixed[0]}; resize "
            "the frames or export the model for this size"
        )
    if frame.thermal is not None and primary.info.uses_thermal:
        allowed = (*thermal_sizes(primary.info, image), image)  # full size: reduced here
        allowed = tuple(dict.fromkeys(allowed))
        size = tuple(frame.thermal.shape[-2:])
        if size not in allowed:
            raise MdError(
                f"{frame.thermal_path}: thermal frame is {size[1]}x{size[0]} but "
                f"{Path(primary.info.source).name} takes "
                f"{' or '.join(f'{w}x{h}' for h, w in allowed)} (camera or full size) beside "
                f"the {image[1]}x{image[0]} visible {frame.visible_path}; resize the thermal"
            )
    return monitor.check(frame.thermal, frame.thermal_error)


def _predict_chunk(
    chunk: list[Frame], who: list[str | None], primary: Predictor, backup: Predictor | None
) -> list[Any]:
    """Predictions per frame (None where nobody serves it), one forward per server and
    thermal size."""
    preds: list[Any] = [None] * len(chunk)
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, (f, w) in enumerate(zip(chunk, who, strict=True)):
        if w is None:
            continue
        shape = f.thermal.shape if (w == "primary" and f.thermal is not None) else ()
        groups.setdefault((w, tuple(shape)), []).append(i)
    for (w, _), idx in groups.items():
        model = primary if w == "primary" else backup
        assert model is not None
        visible = np.stack([chunk[i].visible for i in idx])
        thermal = None
        if model.info.uses_thermal:
            thermal = np.stack([fed_thermal(model, chunk[i]) for i in idx])
        out = model.predict(visible, thermal)
        for j, i in enumerate(idx):
            preds[i] = out[j]
    return preds


def fed_thermal(model: Predictor, frame: Frame) -> np.ndarray:
    """The frame's thermal as 8 bits at a size `model` takes: as given when it takes it,
    else full size reduced to the camera size (bilinear, as the training's down-sampling in
    `reduce_thermal`, then rounded to 8 bits). A missing frame (no health check) is zeros."""
    image = (int(frame.visible.shape[-2]), int(frame.visible.shape[-1]))
    t = to_uint8(frame.thermal) if frame.thermal is not None else np.zeros((1, *image), np.uint8)
    accepted = thermal_sizes(model.info, image)
    if tuple(t.shape[-2:]) in accepted:
        return t
    x = torch.from_numpy(t.astype(np.float32)).div_(255.0)[None]
    low = F.interpolate(x, size=accepted[0], mode="bilinear", align_corners=False)[0]
    return (low * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class Scored:
    id: str
    group: str
    size: tuple[int, ...]  # (H, W)
    target: dict[str, Any]
    pred: Any  # None: not served


def score(task: str, scored: list[Scored]) -> dict[str, Any]:
    """The metric of `md evaluate model` over the frames (unserved: no prediction)."""
    if task == "detection":

        def stream() -> Iterator[tuple[dict[str, Any], Any]]:
            for f in scored:
                t, p = f.target, f.pred
                batch = {
                    "visible": torch.empty(1, 3, *f.size),
                    "boxes": [t["boxes"]],
                    "box_ignore": [t["box_ignore"]],
                    "box_occlusion": [t["box_occlusion"]],
                    "group": [f.group],
                }
                boxes = np.zeros((0, 4), np.float32) if p is None else p["boxes"]
                scores = np.zeros(0, np.float32) if p is None else p["scores"]
                pred = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores)}
                yield batch, [pred]

        return dict(_score_detection(None, stream(), None))
    names = [f.id for f in scored]
    labels = [f.target["labels"].numpy() for f in scored]
    preds = [np.zeros(f.size, np.uint8) if f.pred is None else np.asarray(f.pred) for f in scored]
    return dict(mfnet.evaluate_arrays(names, labels, preds))


def agreement_counts(
    task: str, a: Any, b: Any, min_score: float = AGREE_MIN_SCORE
) -> tuple[int, int]:
    """(agreeing, compared) between two models' predictions of one frame: pixels of the same
    class (segmentation); for detection 2 x the boxes matched one-to-one at IoU >=
    `AGREE_IOU` (greedy, by score) and the number of boxes of both, scores >= `min_score`."""
    if task == "segmentation":
        x, y = np.asarray(a), np.asarray(b)
        return int(np.count_nonzero(x == y)), int(x.size)
    ba = a["boxes"][a["scores"] >= min_score].astype(np.float64)
    bb = b["boxes"][b["scores"] >= min_score].astype(np.float64)
    if len(ba) == 0 or len(bb) == 0:
        return 0, len(ba) + len(bb)
    lt = np.maximum(ba[:, None, :2], bb[None, :, :2])
    rb = np.minimum(ba[:, None, 2:], bb[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    iou = inter / (area(ba)[:, None] + area(bb)[None, :] - inter)
    taken = np.zeros(len(bb), bool)
    matched = 0
    for i in range(len(ba)):  # boxes come sorted by descending score
        cand = np.where(~taken & (iou[i] >= AGREE_IOU), iou[i], -1.0)
        j = int(cand.argmax())
        if cand[j] >= AGREE_IOU:
            taken[j] = True
            matched += 1
    return 2 * matched, len(ba) + len(bb)
