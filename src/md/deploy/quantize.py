"""Static int8 post-training quantization of an exported ONNX graph (`md export --int8`).

ONNX Runtime's ``quantize_static``: QDQ format, per-channel int8 weights, uint8 activations
(x86's fast u8 x s8 kernels), MinMax ranges calibrated on a few hundred camera frames from a
store's bundled inputs (exactly the uint8 frames the graph takes) or a dataset's train split
(reduced as `md.deploy.evaluate.camera_frames` does). Only the convolutional network is
quantized: the frame scaling, thermal up-sampling, stem's ones channel, GroupNorm, box
decoding and NMS stay float (int8 box coordinates would move boxes by pixels).

Why ONNX Runtime and not torch's PT2E flow: the graph is already ONNX, ORT's x86 int8
convolutions are the measured fast path (docs/benchmarks.md), and the quantized file is the
same single self-describing file as the float one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from md.data import open_dataset
from md.deploy.evaluate import camera_frames
from md.deploy.export import (
    ExportOptions,
    atomic_write,
    build_graph,
    onnx_bytes,
    require_onnx,
    set_onnx_metadata,
)
from md.deploy.runtime import ModelInfo
from md.errors import MdError
from md.stores import open_store
from md.stores.schema import INPUT_THERMAL, INPUT_VISIBLE

# Ops inside the conv network that QDQ may quantize (see `network_nodes`).
QUANTIZED_OPS = ("Conv", "Relu", "MaxPool", "Add", "Concat", "Resize", "MatMul")


def _info(meta: dict[str, Any]) -> ModelInfo:
    th = meta["thermal_size"]
    return ModelInfo(
        task=meta["task"],
        num_classes=meta["num_classes"],
        image_size=(meta["image_size"][0], meta["image_size"][1]),
        thermal_size=(th[0], th[1]) if th else None,
        thermal_factor=meta["thermal_factor"],
        score_thresh=meta["score_thresh"],
        format="onnx",
        source="",
        sha256="",
        meta=meta,
    )


def _is_store(calib: str) -> bool:
    p = Path(calib)
    return "://" in calib or p.suffix in (".zarr", ".zip") or (p / "zarr.json").is_file()


def store_frames(calib: str, info: ModelInfo, samples: int) -> Iterator[list[np.ndarray]]:
    """The first `samples` bundled (visible, thermal) uint8 inputs of a target store."""
    store = open_store(calib)
    shapes = {e.name: tuple(e.shape) for e in store.schema.extras}
    if INPUT_VISIBLE not in shapes:
        raise MdError(
            f"{calib}: the store bundles no inputs; calibrate with --calib DATASET, or cache "
            "the store with md cache-teacher --bundle-inputs"
        )
    h, w = info.image_size or (0, 0)
    want_th = info.thermal_size
    have_th = shapes[INPUT_THERMAL][-2:]
    if shapes[INPUT_VISIBLE][-2:] != (h, w) or (want_th is not None and have_th != want_th):
        raise MdError(
            f"{calib}: bundled inputs are {shapes[INPUT_VISIBLE][-1]}x{shapes[INPUT_VISIBLE][-2]} "
            f"with thermal {have_th[1]}x{have_th[0]}, the model takes {w}x{h}"
            + (f" with thermal {want_th[1]}x{want_th[0]}" if want_th else "")
            + "; calibrate with --calib DATASET or a store cached at that size and factor"
        )
    n = min(samples, len(store))
    for start in range(0, n, 16):
        idx = np.arange(start, min(n, start + 16))
        got = store.read(idx, [INPUT_VISIBLE, INPUT_THERMAL])
        for i in range(len(idx)):
            vis = got[INPUT_VISIBLE][i : i + 1].astype(np.uint8)
            th = got[INPUT_THERMAL][i : i + 1].astype(np.uint8)
            yield [vis] if want_th is None else [vis, th]


def dataset_frames(calib: str, info: ModelInfo, samples: int) -> Iterator[list[np.ndarray]]:
    """The first `samples` frames of a dataset's train split, as the camera gives them."""
    root = Path(calib)
    ds = open_dataset(root, split="train" if (root / "train.txt").is_file() else None)
    if ds.task != info.task:
        raise MdError(
            f"{calib}: a {ds.task} dataset cannot calibrate a {info.task} model; pass a "
            f"{info.task} dataset or store"
        )
    h, w = info.image_size or (0, 0)
    for i in range(min(samples, len(ds))):
        item = ds[i]
        if tuple(item["visible"].shape[-2:]) != (h, w):
            raise MdError(
                f"{calib}: frames are {item['visible'].shape[-1]}x{item['visible'].shape[-2]}, "
                f"the model takes {w}x{h}; export with --size to match the data"
            )
        vis, th = camera_frames(info, item["visible"][None], item["thermal"][None])
        yield [vis] if th is None else [vis, th]


def network_nodes(model: Any) -> set[str]:
    """Names of the nodes inside the conv network: Convs, and ops of `QUANTIZED_OPS` all of
    whose non-constant inputs come from such nodes. Input scaling and the thermal Resize
    (fed by the graph inputs), GroupNorm's affine and box decoding (fed by reshapes and
    normalisations) fall outside."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    inside_outputs: set[str] = set()
    inside: set[str] = set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        live = [i for i in node.input if i and i not in constants]
        if node.op_type == "Conv" or (
            node.op_type in QUANTIZED_OPS and live and all(i in inside_outputs for i in live)
        ):
            inside.add(node.name)
            inside_outputs.update(node.output)
    return inside


def _pre_process(path: Path) -> None:
    """ORT's recommended pre-pass (shape inference, graph optimisation) in place; if it
    cannot handle the graph (NMS makes shapes data-dependent) the graph is used as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = path.with_name("pre.onnx")
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "consider pre-processing" advice is being taken
    try:
        quant_pre_process(str(path), str(out), skip_symbolic_shape=True)
        out.replace(path)
    except Exception:  # any failure: keep the graph as it is
        out.unlink(missing_ok=True)
    finally:
        logger.setLevel(level)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a stream of input lists."""

    def __init__(self, names: list[str], frames: Iterator[list[np.ndarray]], batch: int | None):
        self.names, self.frames, self.batch = names, frames, batch
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk: list[list[np.ndarray]] = []
        for _ in range(self.batch or 1):
            item = next(self.frames, None)
            if item is None:
                break
            chunk.append(item)
        if not chunk or (self.batch and len(chunk) < self.batch):
            return None
        self.count += len(chunk)
        return {n: np.concatenate([c[k] for c in chunk]) for k, n in enumerate(self.names)}

    def rewind(self) -> None:  # part of the protocol; one pass is all MinMax needs
        pass


def export_int8(
    ckpt_path: str | Path,
    out: str | Path,
    opts: ExportOptions,
    *,
    calib: str,
    samples: int = 256,
    frames: Iterator[list[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """`md export --int8`: the float ONNX graph, then static int8 QDQ calibrated on
    `samples` frames of `calib` (a store with bundled inputs, or a dataset root); `frames`
    (the graph's input arrays, one frame each) replace `calib` as the source when given
    (`md bench latency` calibrates on random frames: ranges do not change the speed)."""
    require_onnx()
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if opts.format != "onnx":
        raise MdError("--int8 quantizes ONNX graphs: use --format onnx")
    graph, meta = build_graph(ckpt_path, opts, onnx_nms=True)
    info = _info(meta)
    source = "frames" if frames is not None else "store" if _is_store(calib) else "dataset"
    if frames is None:
        frames = (store_frames if source == "store" else dataset_frames)(calib, info, samples)
    with tempfile.TemporaryDirectory(prefix="md-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        fp32.write_bytes(onnx_bytes(graph, meta, opts.batch))
        _pre_process(fp32)
        proto = onnx.load(str(fp32))
        quantizable = network_nodes(proto)
        exclude = [n.name for n in proto.graph.node if n.name not in quantizable]
        reader = _Reader(graph.input_names(), frames, opts.batch)
        q_path = Path(tmp) / "int8.onnx"
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            quantize_static(
                str(fp32),
                str(q_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,  # keeps per-tensor min/max only
            )
        finally:
            logger.setLevel(level)
        if reader.count == 0:
            raise MdError(f"{calib}: no calibration frames; pass a store or dataset with frames")
        meta["int8"] = {
            "method": "onnxruntime quantize_static",
            "format": "QDQ",
            "weights": "int8, per channel",
            "activations": "uint8, per tensor, MinMax",
            "quantized_nodes": len(quantizable),
            "calibration": {"source": source, "location": str(calib), "frames": reader.count},
        }
        q = onnx.load(str(q_path))
        set_onnx_metadata(q, meta)
        data = q.SerializeToString()
    atomic_write(Path(out), lambda p: p.write_bytes(data))
    return json.loads(json.dumps(meta))
