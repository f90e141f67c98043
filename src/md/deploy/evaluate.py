"""Score any `Predictor` (an exported file, a checkpoint) on a dataset split, with exactly
the metric code of `md evaluate model` (`md.eval.kaist` / `md.eval.mfnet` through
`md.eval.model_eval`), so a checkpoint and its export are compared like for like.

Frames are given as a camera would: visible rounded to uint8, thermal reduced to the camera
size the predictor's `ModelInfo` asks for (the bilinear down-sampling of
`md.data.transforms.reduce_thermal`), then rounded to uint8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from md.data import open_dataset
from md.data.collate import collate
from md.deploy.runtime import ModelInfo, Predictor
from md.errors import MdError
from md.eval.model_eval import _score_detection, _score_segmentation
from md.eval.runtime import latency_ms

Corruption = Callable[
    [torch.Tensor, torch.Tensor, Sequence[str]], tuple[torch.Tensor, torch.Tensor]
]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (round to nearest; exact for 8-bit sources)."""
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def camera_frames(
    info: ModelInfo, visible: torch.Tensor, thermal: torch.Tensor
) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-resolution float frames (B, 3, H, W), (B, 1, H, W) -> what the camera pair of
    `info` gives: uint8 visible, uint8 thermal at ``info.thermal_size`` (None: no thermal)."""
    if not info.uses_thermal or info.thermal_size is None:
        return to_uint8(visible), None
    if tuple(thermal.shape[-2:]) != info.thermal_size:
        thermal = F.interpolate(
            thermal, size=info.thermal_size, mode="bilinear", align_corners=False
        )
    return to_uint8(visible), to_uint8(thermal)


def _check_sizes(info: ModelInfo, data: str | Path, sample: dict[str, Any]) -> None:
    h, w = (int(v) for v in sample["visible"].shape[-2:])
    if info.image_size is not None and info.image_size != (h, w):
        mh, mw = info.image_size
        raise MdError(
            f"{info.source}: takes {mw}x{mh} frames but {data} has {w}x{h}; re-export it with "
            f"md export --size {w}x{h}"
        )


def _as_torch(task: str, preds: Any) -> Any:
    if task == "segmentation":
        return torch.from_numpy(np.asarray(preds))
    return [
        {"boxes": torch.from_numpy(p["boxes"]), "scores": torch.from_numpy(p["scores"])}
        for p in preds
    ]


def evaluate_predictor(
    predictor: Predictor,
    data: str | Path,
    *,
    split: str | None = "test",
    save_results: str | Path | None = None,
    corrupt: Corruption | None = None,
    batch_size: int = 8,
    latency: bool = False,
) -> dict[str, Any]:
    """Score `predictor` on a split of `data`; the result dict has the keys of
    `md.eval.model_eval.evaluate_model` (``checkpoint`` is the evaluated file), plus
    ``format``. ``corrupt(visible, thermal, ids)`` acts on the full-resolution float frames
    before the thermal is reduced."""
    info = predictor.info
    ds = open_dataset(data, split=split)
    if ds.task != info.task:
        raise MdError(
            f"{info.source}: a {info.task} model cannot be evaluated on {data} ({ds.layout} "
            f"layout, {ds.task}); use a {ds.task} model"
        )
    if len(ds) == 0:
        raise MdError(f"{data}: split {split!r} has no samples; pick a split with samples")
    _check_sizes(info, data, ds[0])
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)

    def stream() -> Iterator[tuple[dict[str, Any], Any]]:
        for batch in loader:
            visible, thermal = batch["visible"], batch["thermal"]
            if corrupt is not None:
                visible, thermal = corrupt(visible, thermal, list(batch["id"]))
            vis8, th8 = camera_frames(info, visible, thermal)
            yield batch, _as_torch(info.task, predictor.predict(vis8, th8))

    if info.task == "detection":
        result = _score_detection(ds, stream(), save_results)
    else:
        result = _score_segmentation(stream(), save_results)
    meta = info.meta
    result.update(
        {
            "checkpoint": info.source,
            "checkpoint_sha256": info.sha256,
            "model_kind": (meta.get("model") or {}).get("kind", "unknown"),
            "task": ds.task,
            "split": split,
            "samples": len(ds),
            "thermal_factor": info.thermal_factor if info.uses_thermal else "none",
            "format": info.format,
            "exported_from_sha256": meta.get("checkpoint_sha256"),
        }
    )
    if latency:
        one = collate([ds[0]])
        vis8, th8 = camera_frames(info, one["visible"], one["thermal"])
        stats = latency_ms(lambda: predictor.predict(vis8, th8), torch.device("cpu"))
        result["latency"] = {
            **stats,
            "device": "cpu",
            "dtype": "int8" if info.format == "onnx-int8" else "float32",
            "image_size": list(one["visible"].shape[-2:]),
        }
    return result
