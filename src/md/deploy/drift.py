"""`md drift`: score unlabeled incoming frames against a store's reference statistics.

Tests (one per modality, and one per stored level when a student is given): the set's score
is the mean of its frames' scores (`md.stores.reference`); it is compared with the threshold
calibrated on the store's held-out in-distribution frames for the set's size. The overall
false-alarm rate ``alpha`` is split evenly over the tests (Bonferroni), so an
in-distribution set of any size raises a false alarm with probability at most ``alpha``.
Each frame's contribution (its score minus the held-out mean, over the held-out standard
deviation, summed over tests) ranks the frames for re-distillation (`select_frames`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from md.data import open_dataset
from md.data.request import REQUEST_KIND, REQUEST_VERSION
from md.errors import ConfigError, DataError
from md.stores import open_store
from md.stores.reference import (
    MODALITIES,
    Reference,
    feature_score,
    frame_channel_means,
    frame_histogram,
    luma,
    read_reference,
    set_threshold,
    tv_distance,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class Frames:
    """Incoming frames: ids and per-modality planes in [0, 1]; the full inputs (visible
    [3, H, W], thermal [1, H, W]) are kept for a student."""

    ids: list[str]
    visible: list[np.ndarray]  # [3, H, W] float32
    thermal: list[np.ndarray]  # [1, H, W] float32
    paths: list[dict[str, str]]


def frames_from_data(data: str, split: str | None) -> Frames:
    ds = open_dataset(data, split=split)
    out = Frames([], [], [], [])
    for s in ds.samples:
        item = ds.load(s)
        out.ids.append(s.id)
        out.visible.append(item["visible"].numpy())
        out.thermal.append(item["thermal"].numpy())
        out.paths.append({"visible": str(s.visible_path), "thermal": str(s.thermal_path)})
    if not out.ids:
        raise DataError(f"{data}: no frames to score")
    return out


def _image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I;16") and mode == "L":
                return np.asarray(img, dtype=np.float32)[None] / 65535.0
            arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    except Exception as e:  # PIL raises many types for damaged files
        raise DataError(f"{path}: unreadable image ({type(e).__name__}); re-copy it") from None
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def frames_from_dirs(visible_dir: str, thermal_dir: str) -> Frames:
    """Pairs of files with the same stem in the two folders (sorted by stem)."""

    def stems(d: str) -> dict[str, Path]:
        root = Path(d)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; pass a folder of images")
        return {p.stem: p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    vis, th = stems(visible_dir), stems(thermal_dir)
    common = sorted(set(vis) & set(th))
    if not common:
        raise DataError(
            f"{visible_dir}, {thermal_dir}: no image stems in common; name each visible frame "
            "like its thermal frame (e.g. 000123.png in both)"
        )
    out = Frames([], [], [], [])
    for stem in common:
        out.ids.append(stem)
        out.visible.append(_image(vis[stem], "RGB"))
        out.thermal.append(_image(th[stem], "L"))
        out.paths.append({"visible": str(vis[stem]), "thermal": str(th[stem])})
    return out


def input_scores(ref: Reference, frames: Frames) -> dict[str, np.ndarray]:
    """Per-frame total-variation score of each modality."""
    planes = {
        "visible": [luma(v) for v in frames.visible],
        "thermal": [t[0] for t in frames.thermal],
    }
    return {
        m: np.array([tv_distance(frame_histogram(p), ref.hist[m]) for p in planes[m]])
        for m in MODALITIES
    }


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def _student_frame_means(
    predictor: Any, levels: list[str], visible: np.ndarray, thermal: np.ndarray
) -> dict[str, np.ndarray]:
    """{level: [N, C]} spatial means of the student's features on uint8 frames."""
    out: dict[str, list[np.ndarray]] = {lv: [] for lv in levels}
    with torch.inference_mode():
        for i in range(len(visible)):
            args = predictor.inputs(visible[i : i + 1], thermal[i : i + 1])
            feats = predictor.model(*args, side_outputs=True)["features"]
            for lv in levels:
                out[lv].append(frame_channel_means(feats[lv].float().cpu().numpy())[0])
    return {lv: np.stack(v) for lv, v in out.items()}


def student_scores(
    ref: Reference, frames: Frames, student: str, st: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-frame feature scores of the student's features at each level it shares with the
    store, and the same scores on the store's held-out frames (the student's calibration:
    a student's features are not the teacher's, so the teacher's held-out scores would
    alarm on every set). Needs a store with bundled inputs."""
    from md.deploy.checkpoint import CheckpointPredictor
    from md.stores.reference import reference_indices
    from md.stores.schema import INPUT_THERMAL, INPUT_VISIBLE

    predictor = CheckpointPredictor(student, device="cpu")
    if predictor.kind != "student":
        raise ConfigError(
            f"{student}: a {predictor.kind} checkpoint; pass a student (md train-student)"
        )
    if st.schema.array_spec(INPUT_VISIBLE) is None:
        raise ConfigError(
            f"{st.url}: --student needs a store with bundled inputs to calibrate the student's "
            "scores; re-cache with --bundle-inputs, or drop --student"
        )
    levels = [lv for lv in ref.frame_mean_mean if lv in (predictor.info.meta["levels"] or [])]
    if not levels:
        raise ConfigError(
            f"{student}: the student distils none of the store's levels "
            f"{list(ref.frame_mean_mean)}; pass a student trained on this store"
        )
    _, held = reference_indices(st.n)
    bundled = st.read(held, [INPUT_VISIBLE, INPUT_THERMAL])
    held_means = _student_frame_means(
        predictor, levels, bundled[INPUT_VISIBLE], bundled[INPUT_THERMAL]
    )
    new_means = _student_frame_means(
        predictor, levels, _to_uint8(np.stack(frames.visible)), _to_uint8(np.stack(frames.thermal))
    )
    scores, calib = {}, {}
    for lv in levels:
        m, s = ref.frame_mean_mean[lv], ref.frame_mean_std[lv]
        scores[f"student_{lv}"] = feature_score(new_means[lv], m, s)
        calib[f"student_{lv}"] = feature_score(held_means[lv], m, s)
    return scores, calib


def score(
    store: str, frames: Frames, *, alpha: float = 0.05, student: str | None = None
) -> dict[str, Any]:
    """The drift report (JSON): per test the set score, threshold and verdict; overall
    verdict; per-frame scores and contributions."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha {alpha}: use a false-alarm rate between 0 and 1, e.g. 0.05")
    st = open_store(store)
    ref = read_reference(st.reference_group(), st.url)
    per_frame = input_scores(ref, frames)
    if student:
        extra, calib = student_scores(ref, frames, student, st)
        per_frame.update(extra)
        ref.heldout.update(calib)
    n = len(frames.ids)
    a = alpha / len(per_frame)
    tests: dict[str, Any] = {}
    contribution = np.zeros(n)
    for test, s in per_frame.items():
        mu, sd, held = ref.calibration(test)
        thr = set_threshold(mu, sd, n, a, held)
        value = float(s.mean())
        tests[test] = {
            "score": value,
            "threshold": thr,
            "drift": value > thr,
            "false_alarm_rate": a,
            "calibration": {"heldout_frames": held, "mean": mu, "std": sd},
            "z": (value - mu) / (sd * np.sqrt(1 / n + 1 / held)) if sd > 0 else None,
        }
        contribution += (s - mu) / (sd if sd > 0 else 1.0)
    drift = any(t["drift"] for t in tests.values())
    return {
        "store": st.url,
        "frames": n,
        "verdict": "drift" if drift else "in-distribution",
        "drift": drift,
        "false_alarm_rate": alpha,
        "tests": tests,
        "per_frame": [
            {
                "id": frames.ids[i],
                **{t: float(per_frame[t][i]) for t in per_frame},
                "contribution": float(contribution[i]),
                "files": frames.paths[i],
            }
            for i in range(n)
        ],
    }


def select_frames(report: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The k frames of highest drift contribution (ties: input order)."""
    rows = report["per_frame"]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["contribution"], i))
    return [rows[i] for i in order[:k]]


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_request(report: dict[str, Any], frames: Frames, k: int, path: Path) -> dict[str, Any]:
    """Write the re-distillation request of the `k` frames of highest drift contribution:
    ids, file paths and sha256 (the hub checks them; it caches the frames from its copy of
    the data, or from the files shipped beside the request). Returns a summary."""
    import json

    chosen = select_frames(report, k)
    rows = []
    nbytes = 0
    for row in chosen:
        files = row["files"]
        rows.append({
            "id": row["id"],
            "contribution": row["contribution"],
            "files": {m: {"path": p, "sha256": _sha256(p)} for m, p in files.items()},
        })  # fmt: skip
        nbytes += sum(Path(p).stat().st_size for p in set(files.values()))
    doc = {
        "kind": REQUEST_KIND,
        "version": REQUEST_VERSION,
        "base_store": report["store"],
        "selected_by": "drift contribution (sum over tests of the frame's held-out z-score)",
        "verdict": report["verdict"],
        "frames": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    return {"path": str(path), "frames": len(rows), "bytes_request": len(text.encode()),
            "bytes_frames": nbytes}  # fmt: skip


def format_report(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['verdict']}: {r['frames']} frames against {r['store']} "
        f"(false-alarm rate {r['false_alarm_rate']:g} over {len(r['tests'])} tests)"
    ]
    for name, t in r["tests"].items():
        flag = "DRIFT" if t["drift"] else "ok"
        lines.append(f"  {name:<14} score {t['score']:.4f}  threshold {t['threshold']:.4f}  {flag}")
    return lines


def check_sources(data: str | None, visible_dir: str | None, thermal_dir: str | None) -> None:
    if bool(data) == bool(visible_dir or thermal_dir) or bool(visible_dir) != bool(thermal_dir):
        raise ConfigError(
            "md drift needs either --data DIR or both --visible-dir and --thermal-dir"
        )


__all__: Sequence[str] = [
    "Frames",
    "frames_from_data",
    "frames_from_dirs",
    "score",
    "select_frames",
]
