"""Predictors for the files `md export` writes: ONNX (run by ONNX Runtime) and TorchScript.

`open_exported(path)` reads the file's metadata (`md.deploy.export`) into a `ModelInfo` and
returns a `Predictor` whose ``predict`` checks the frames (dtype, channels, sizes), runs the
graph and splits its flat detections into per-frame ``{"boxes", "scores"}`` (or returns the
class map). A graph exported with a fixed batch is fed in chunks of that size (the last one
padded with copies of its last frame, whose outputs are dropped).
"""

from __future__ import annotations

import json
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from md.deploy.export import (
    EXPORT_FORMAT,
    METADATA_KEY,
    TORCHSCRIPT_EXTRA,
    quiet_torchscript,
    require_onnx,
)
from md.deploy.runtime import ModelInfo
from md.errors import MdError
from md.models.checkpoint import file_sha256

FIX = "re-export it with md export"
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")  # what docs/deploy.md suggests


def exported_format(path: str | Path) -> str | None:
    """ "onnx" or "torchscript" for a file that looks like an `md export` output, else None
    (a checkpoint, or something else). ONNX goes by the ``.onnx`` suffix, TorchScript by the
    ``extra/md.json`` member of its zip archive or a ``.ts`` / ``.torchscript`` / ``.jit``
    suffix (so that a damaged one is reported as such, not as "not exported")."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n.endswith(f"extra/{TORCHSCRIPT_EXTRA}") for n in names):
            return "torchscript"
    return "torchscript" if path.suffix.lower() in TORCHSCRIPT_SUFFIXES else None


def _model_info(path: Path, meta_text: str | None, fmt: str) -> ModelInfo:
    if not meta_text:
        raise MdError(f"{path}: no md metadata in this {fmt} file; {FIX}")
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError:
        raise MdError(f"{path}: its md metadata is not JSON; {FIX}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise MdError(f"{path}: not an {EXPORT_FORMAT} file; {FIX}")
    thermal = meta.get("thermal_size")
    return ModelInfo(
        task=str(meta["task"]),
        num_classes=int(meta["num_classes"]),
        image_size=(int(meta["image_size"][0]), int(meta["image_size"][1])),
        thermal_size=(int(thermal[0]), int(thermal[1])) if thermal else None,
        thermal_factor=int(meta["thermal_factor"]),
        score_thresh=float(meta["score_thresh"]),
        format="onnx-int8" if fmt == "onnx" and meta.get("int8") else fmt,
        source=str(path),
        sha256=file_sha256(path),
        meta=meta,
    )


class ExportedPredictor(ABC):
    """Shared frame checks and output splitting; subclasses run the graph (`_run`)."""

    info: ModelInfo

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        batch = info.meta.get("batch", "dynamic")
        self.batch: int | None = None if batch == "dynamic" else int(batch)

    @abstractmethod
    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs for its inputs (ONNX Runtime or TorchScript)."""

    def check_frames(self, visible: np.ndarray, thermal: np.ndarray | None) -> list[np.ndarray]:
        """The graph's inputs for these frames, or a one-line `MdError` on a mismatch."""
        info, src = self.info, self.info.source
        h, w = info.image_size or (0, 0)
        if not isinstance(visible, np.ndarray) or visible.dtype != np.uint8 or visible.ndim != 4:
            raise MdError(
                f"{src}: visible frames must be a uint8 (N, 3, H, W) array, got "
                f"{getattr(visible, 'dtype', type(visible).__name__)} "
                f"{getattr(visible, 'shape', '')}; pass 8-bit RGB frames"
            )
        if visible.shape[1] != 3 or visible.shape[2:] != (h, w):
            raise MdError(
                f"{src}: visible frames are {visible.shape[1]}x{visible.shape[3]}x"
                f"{visible.shape[2]} (CxWxH), the model takes 3x{w}x{h}; resize the frames or "
                f"re-export with md export --size {visible.shape[3]}x{visible.shape[2]}"
            )
        if not info.uses_thermal:
            return [np.ascontiguousarray(visible)]
        th, tw = info.thermal_size or (0, 0)
        if thermal is None:
            raise MdError(f"{src}: this model needs thermal frames ({tw}x{th}); pass them")
        if not isinstance(thermal, np.ndarray) or thermal.dtype != np.uint8 or thermal.ndim != 4:
            raise MdError(
                f"{src}: thermal frames must be a uint8 (N, 1, h, w) array, got "
                f"{getattr(thermal, 'dtype', type(thermal).__name__)} "
                f"{getattr(thermal, 'shape', '')}; pass 8-bit single-channel frames"
            )
        if thermal.shape[1] != 1 or thermal.shape[2:] != (th, tw):
            raise MdError(
                f"{src}: thermal frames are {thermal.shape[3]}x{thermal.shape[2]} with "
                f"{thermal.shape[1]} channel(s); the model takes 1 channel at {tw}x{th} (the "
                f"camera size of thermal factor {info.thermal_factor}); reduce the frames to it"
            )
        if thermal.shape[0] != visible.shape[0]:
            raise MdError(
                f"{src}: {visible.shape[0]} visible but {thermal.shape[0]} thermal frames; "
                "pass pairs"
            )
        return [np.ascontiguousarray(visible), np.ascontiguousarray(thermal)]

    def predict(
        self, visible: np.ndarray, thermal: np.ndarray | None
    ) -> list[dict[str, np.ndarray]] | np.ndarray:
        inputs = self.check_frames(visible, thermal)
        n = visible.shape[0]
        step = self.batch or max(n, 1)
        parts: list[Any] = []
        for start in range(0, n, step):
            chunk = [x[start : start + step] for x in inputs]
            real = chunk[0].shape[0]
            if self.batch is not None and real < self.batch:
                pad = self.batch - real
                chunk = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in chunk]
            outputs = self._run(chunk)
            parts.extend(self._split(outputs, real))
        if self.info.task == "segmentation":
            h, w = self.info.image_size or (0, 0)
            return np.stack(parts) if parts else np.zeros((0, h, w), np.uint8)
        return parts

    def _split(self, outputs: list[np.ndarray], real: int) -> list[Any]:
        if self.info.task == "segmentation":
            return list(outputs[0][:real].astype(np.uint8, copy=False))
        boxes, scores, counts = outputs[0], outputs[1], outputs[2]
        ends = np.cumsum(counts)
        starts = ends - counts
        return [
            {
                "boxes": boxes[s:e].astype(np.float32, copy=False).reshape(-1, 4),
                "scores": scores[s:e].astype(np.float32, copy=False).reshape(-1),
            }
            for s, e in zip(starts[:real], ends[:real], strict=True)
        ]


class OnnxPredictor(ExportedPredictor):
    def __init__(self, info: ModelInfo, session: Any) -> None:
        super().__init__(info)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, dict(zip(self.input_names, inputs, strict=True))))


class TorchScriptPredictor(ExportedPredictor):
    def __init__(self, info: ModelInfo, module: Any) -> None:
        super().__init__(info)
        self.module = module

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            out = self.module(*[torch.from_numpy(x) for x in inputs])
        return [o.numpy() for o in out]


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of a file, or a one-line `MdError` if it will not load."""
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT's notes on unused initializers are noise
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail / InvalidProtobuf / RuntimeException types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MdError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {first[:160]}); the file "
            f"is damaged or truncated: {FIX}"
        ) from None


def open_exported(
    path: str | Path, *, task: str | None = None, threads: int | None = None
) -> ExportedPredictor:
    """A `Predictor` for an exported file; `task` refuses a model made for the other task;
    `threads`: ONNX Runtime intra-op threads (default: its own choice)."""
    path = Path(path)
    if not path.is_file():
        raise MdError(f"{path}: model file not found")
    fmt = exported_format(path)
    predictor: ExportedPredictor
    if fmt == "onnx":
        session = onnx_session(path, threads)
        meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        predictor = OnnxPredictor(_model_info(path, meta, "onnx"), session)
    elif fmt == "torchscript":
        import torch

        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            with quiet_torchscript():
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:  # torch raises RuntimeError / ValueError on damaged archives
            raise MdError(
                f"{path}: not a readable TorchScript model ({type(e).__name__}); the file is "
                f"damaged or truncated: {FIX}"
            ) from None
        module.eval()
        predictor = TorchScriptPredictor(_model_info(path, extra[TORCHSCRIPT_EXTRA], fmt), module)
    else:
        raise MdError(
            f"{path}: not an exported model (expected a .onnx file or a TorchScript file from "
            "md export); export the checkpoint with md export"
        )
    if task is not None and predictor.info.task != task:
        raise MdError(
            f"{path}: this is a {predictor.info.task} model, not {task}; use a {task} model"
        )
    return predictor
