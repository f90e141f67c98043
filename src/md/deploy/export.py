"""`md export`: a checkpoint as one self-contained ONNX or TorchScript graph for the camera.

The exported graph takes what a deployed camera pair gives, at a fixed frame size:

- ``visible``: ``uint8 (N, 3, H, W)`` RGB;
- ``thermal``: ``uint8 (N, 1, h, w)`` at the thermal camera's own low resolution
  (``h, w = H // d, W // d``, ``d = sqrt(thermal factor)``, as `md.data.transforms.reduce_thermal`
  makes it); absent for a visible-only student.

Inside: ``/ 255``, the thermal up-sampling of `reduce_thermal` (bilinear,
``align_corners=False``), the ImageNet normalisation and, for an image-level (6-channel)
student, the folded stem: ``conv1(norm(cat(v, t, t, t)))`` is one 5-channel convolution of
``cat(v, t, 1)``, the constant channel carrying the mean term (zero padding makes it a border
map; see `md.models.fold`, which precomputes that map instead, a constant that would weigh
20 MB at 640x512). ``head_input="trunk"`` students lose their transfer modules (training-only).

Outputs: detection ``boxes float32 (S, 4)`` xyxy pixels, ``scores float32 (S,)`` and
``counts int64 (N,)``: the S detections of the batch after NMS, image after image (the first
``counts[0]`` are image 0's, ...), each image's by decreasing score. NMS is in the graph (ONNX
``NonMaxSuppression``; in TorchScript a scripted greedy NMS with the same rule as
`md.models.heads.boxes.nms`). Segmentation: ``class_map uint8 (N, H, W)``. With
``logits=True`` the raw head outputs come too (``cls_logits``/``box_deltas`` or ``logits``).

Metadata (ONNX ``metadata_props["md"]``, TorchScript extra file ``md.json``; JSON): task,
classes, thermal factor and sizes, normalisation, score threshold, the checkpoint's sha256 and
lineage. Files are written to a temporary name and renamed: never half-written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from md import __version__
from md.data.mfnet import CLASSES as MFNET_CLASSES
from md.data.transforms import thermal_side_divisor
from md.errors import MdError
from md.eval.model_eval import default_thermal_factor
from md.models import load_model
from md.models.checkpoint import file_sha256
from md.models.heads.boxes import box_area, clip_boxes, decode, nms
from md.models.norm import IMAGENET_MEAN, IMAGENET_STD
from md.models.student import OneStreamStudent

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "md-export/1"
METADATA_KEY = "md"  # ONNX metadata_props key; TorchScript extra file "md.json"
TORCHSCRIPT_EXTRA = "md.json"
OPSET = 17
# The published cameras' frame sizes (W, H): KAIST 640x512, MFNet 640x480.
DEFAULT_SIZES = {"detection": (640, 512), "segmentation": (640, 480)}
EXPORT_EXTRA_HINT = "pip install 'md[export]'"


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"
    size: tuple[int, int] | None = None  # (W, H); None: the task's camera size
    batch: int | None = None  # None: dynamic batch
    score_thresh: float = 0.01  # what `md evaluate model` scores with
    nms_iou: float = 0.5
    max_det: int = 1000
    pre_nms_topk: int = 1000
    logits: bool = False  # also output the raw head outputs


def require_onnx() -> None:
    """A one-line `MdError` naming the extra when onnx / onnxruntime are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise MdError(
            f"ONNX export and ONNX Runtime need the export extra ({e.name} is not "
            f"installed): {EXPORT_EXTRA_HINT}"
        ) from None


# --- the graph ---------------------------------------------------------------------------------


def five_channel_stem(conv1: nn.Conv2d) -> nn.Conv2d:
    """conv1 of a 6-channel student folded with its ImageNet normalisation into a convolution
    of ``cat(visible, thermal, ones)`` (B, 5, H, W), inputs in [0, 1].

    ``conv(W, (x6 - m) / s) = conv(W / s, x6) - conv(W m / s, 1_image)`` (zero padding of the
    normalised input is zero padding of both terms); the three thermal copies sum their
    weights, and the ones channel carries ``-sum_c W_c m_c / s_c``.
    """
    if conv1.in_channels != 6 or conv1.bias is not None:
        raise MdError("only a bias-free 6-channel conv1 folds into the export stem")
    w = conv1.weight.detach().double()
    mean = torch.tensor(IMAGENET_MEAN * 2, dtype=torch.float64).view(1, 6, 1, 1)
    std = torch.tensor(IMAGENET_STD * 2, dtype=torch.float64).view(1, 6, 1, 1)
    scaled = w / std
    offset = (w * mean / std).sum(1, keepdim=True)
    folded = torch.cat([scaled[:, :3], scaled[:, 3:].sum(1, keepdim=True), -offset], 1)
    conv = nn.Conv2d(
        5,
        conv1.out_channels,
        conv1.kernel_size,  # type: ignore[arg-type]
        stride=conv1.stride,  # type: ignore[arg-type]
        padding=conv1.padding,  # type: ignore[arg-type]
        dilation=conv1.dilation,  # type: ignore[arg-type]
        bias=False,
    )
    conv.weight.data.copy_(folded.float())
    return conv


class WindowAveragePool(nn.Module):
    """`nn.AdaptiveAvgPool2d` as two matrix products, for frame sizes the ONNX exporter
    refuses (an output size that does not divide the input: PSPNet's 2/3/6 bins on a 15x20
    map). Row i of each matrix averages torch's window ``[floor(i n / o), ceil((i+1) n / o))``.
    """

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.output_size = (int(size[0]), int(size[1]))

    @staticmethod
    def window_matrix(n: int, o: int) -> Tensor:
        m = torch.zeros(o, n)
        for i in range(o):
            start, end = (i * n) // o, -((-(i + 1) * n) // o)
            m[i, start:end] = 1.0 / (end - start)
        return m

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows = self.window_matrix(h, self.output_size[0]).to(x)
        cols = self.window_matrix(w, self.output_size[1]).to(x)
        return torch.matmul(torch.matmul(rows, x), cols.t())


def replace_adaptive_pools(model: nn.Module) -> None:
    """Swap every `nn.AdaptiveAvgPool2d` of `model` (in place) for a `WindowAveragePool`."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, WindowAveragePool(child.output_size))


def nms_select(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS per image, scriptable: boxes (N, k, 4), scores (N, k), valid (N, k) bool ->
    (S, 2) int64 rows (image, index), image after image, each by decreasing score (stable:
    equal scores keep index order). A box is dropped when its IoU with a kept, higher-scored
    box is greater than ``iou_threshold`` (`md.models.heads.boxes.nms`'s rule)."""
    rows: list[Tensor] = []
    for b in range(boxes.shape[0]):
        cand = torch.nonzero(valid[b]).reshape(-1)
        order = cand[torch.sort(scores[b][cand], descending=True, stable=True)[1]]
        bx = boxes[b][order]
        area = (bx[:, 2] - bx[:, 0]).clamp(min=0) * (bx[:, 3] - bx[:, 1]).clamp(min=0)
        lt = torch.maximum(bx[:, None, :2], bx[None, :, :2])
        rb = torch.minimum(bx[:, None, 2:], bx[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        union = area[:, None] + area[None, :] - inter
        iou = inter / union.clamp(min=1.1754943508222875e-38)
        over = torch.triu(iou > iou_threshold, diagonal=1)
        n = order.shape[0]
        removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        keep: list[int] = []
        for i in range(n):
            if not bool(removed[i]):
                keep.append(i)
                removed = removed | over[i]
        kept = order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]
        rows.append(torch.stack([torch.full_like(kept, b), kept], dim=1))
    if len(rows) == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=boxes.device)
    return torch.cat(rows, dim=0)


_SCRIPTED: dict[str, Any] = {}


def scripted_nms_select() -> Any:
    """`nms_select` compiled by TorchScript (once), so that a traced graph keeps its loop
    instead of unrolling the one trace it saw. torch 2.13 calls TorchScript deprecated (the
    format still loads and runs); the notice is silenced here, where it is expected."""
    if "nms" not in _SCRIPTED:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            _SCRIPTED["nms"] = torch.jit.script(nms_select)
    return _SCRIPTED["nms"]


class _OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` in the exported graph; its torch forward (run while the
    exporter traces) is `nms_select`, which follows the same rule."""

    @staticmethod
    def forward(
        ctx: Any, boxes: Tensor, scores: Tensor, iou_threshold: float, max_det: int
    ) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            cand = torch.nonzero(scores[b] >= 0).reshape(-1)
            kept = cand[nms(boxes[b][cand], scores[b][cand], iou_threshold)][:max_det]
            rows.append(torch.stack([torch.full_like(kept, b), torch.zeros_like(kept), kept], 1))
        return torch.cat(rows, dim=0)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou_threshold: float, max_det: int) -> Any:
        max_out = g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        thr = g.op("Constant", value_t=torch.tensor([0.0], dtype=torch.float32))
        scores3 = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
        return g.op("NonMaxSuppression", boxes, scores3, max_out, iou, thr)


class DeployGraph(nn.Module):
    """camera frames (uint8) -> detections after NMS / class map; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        task: str,
        image_hw: tuple[int, int],
        thermal_hw: tuple[int, int] | None,
        opts: ExportOptions,
        onnx_nms: bool,
    ) -> None:
        super().__init__()
        self.kind, self.task = kind, task
        self.image_hw, self.thermal_hw = image_hw, thermal_hw
        self.opts, self.onnx_nms = opts, onnx_nms
        self.stem = "none"
        model = copy.deepcopy(model).eval()
        if isinstance(model, OneStreamStudent):
            if model.head_input == "trunk":  # training-only side modules
                model.attention_transfer = nn.ModuleDict()
                model.semantic_transfer = nn.ModuleDict()
                model.levels = ()
            if model.norm.in_channels == 6:
                model.trunk.conv1 = five_channel_stem(model.trunk.conv1)
                model.norm = nn.Identity()  # type: ignore[assignment]
                self.stem = "folded"
        replace_adaptive_pools(model)
        self.model = model
        self.anchors: Tensor
        if task == "detection":
            head: Any = model.head
            with torch.no_grad():
                pred = self._pred(*self.example_inputs(1))
            self.register_buffer("anchors", pred["anchors"].detach().clone(), persistent=False)
            self.box_std = tuple(head.box_std)

    def example_inputs(self, batch: int) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        h, w = self.image_hw
        vis = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
        if self.thermal_hw is None:
            return (vis,)
        th = torch.randint(0, 256, (batch, 1, *self.thermal_hw), generator=g, dtype=torch.uint8)
        return (vis, th)

    def model_inputs(self, visible: Tensor, thermal: Tensor | None) -> tuple[Tensor, ...]:
        """The float inputs of the wrapped model (what `md evaluate model` feeds it)."""
        v = visible.float() / 255.0
        if thermal is None:
            return (v,)
        t = thermal.float() / 255.0
        if tuple(t.shape[-2:]) != self.image_hw:
            t = F.interpolate(t, size=self.image_hw, mode="bilinear", align_corners=False)
        if self.kind != "student":
            return (v, t)
        if self.stem == "folded":
            return (torch.cat([v, t, torch.ones_like(t)], dim=1),)
        return (torch.cat([v, t.expand_as(v)], dim=1),)

    def _pred(self, *frames: Tensor) -> dict[str, Any]:
        thermal = frames[1] if len(frames) > 1 else None
        return self.model(*self.model_inputs(frames[0], thermal))["pred"]

    def forward(self, *frames: Tensor) -> tuple[Tensor, ...]:
        pred = self._pred(*frames)
        if self.task == "segmentation":
            logits = pred["logits"]
            cmap = logits.argmax(dim=1).to(torch.uint8)
            return (cmap, logits) if self.opts.logits else (cmap,)
        return self._detections(pred["cls_logits"], pred["box_deltas"])

    def _detections(self, cls_logits: Tensor, box_deltas: Tensor) -> tuple[Tensor, ...]:
        scores = cls_logits[..., 0].sigmoid()  # (N, A)
        k = min(int(self.anchors.shape[0]), self.opts.pre_nms_topk)
        top, idx = scores.topk(k, dim=1)  # (N, k), by decreasing score
        deltas = box_deltas.gather(1, idx[..., None].expand(-1, -1, 4))
        boxes = clip_boxes(decode(deltas, self.anchors[idx], self.box_std), self.image_hw)
        valid = (top > self.opts.score_thresh) & (box_area(boxes) > 0)
        masked = torch.where(valid, top, torch.full_like(top, -1.0))
        if self.onnx_nms:
            sel = _OnnxNms.apply(boxes, masked, self.opts.nms_iou, self.opts.max_det)
            image, index = sel[:, 0], sel[:, 2]
        else:
            sel = scripted_nms_select()(boxes, masked, valid, self.opts.nms_iou)
            image, index = sel[:, 0], sel[:, 1]
        n = torch.arange(boxes.shape[0], device=boxes.device)
        counts = (image[None, :] == n[:, None]).sum(dim=1)
        out: tuple[Tensor, ...] = (boxes[image, index], masked[image, index], counts)
        if self.opts.logits:
            out = (*out, cls_logits, box_deltas)
        return out

    def input_names(self) -> list[str]:
        return ["visible"] if self.thermal_hw is None else ["visible", "thermal"]

    def output_names(self) -> list[str]:
        if self.task == "segmentation":
            return ["class_map", "logits"] if self.opts.logits else ["class_map"]
        names = ["boxes", "scores", "counts"]
        return [*names, "cls_logits", "box_deltas"] if self.opts.logits else names


# --- from a checkpoint ---------------------------------------------------------------------------


def thermal_size(image_hw: tuple[int, int], factor: int) -> tuple[int, int] | None:
    """(h, w) of the thermal camera for frames of (H, W) at a pixel factor; None: no thermal."""
    if factor == 0:
        return None
    d = thermal_side_divisor(factor)
    return (max(1, image_hw[0] // d), max(1, image_hw[1] // d))


def build_graph(
    ckpt_path: str | Path, opts: ExportOptions, onnx_nms: bool
) -> tuple[DeployGraph, dict[str, Any]]:
    """The deploy graph of a checkpoint and its metadata."""
    model, ckpt = load_model(ckpt_path)
    kind, task = ckpt["model_kind"], ckpt["task"]
    if kind not in ("student", "teacher"):
        raise MdError(
            f"{ckpt_path}: md export takes student and teacher checkpoints, not a {kind}; "
            "export the students it averages instead"
        )
    w, h = opts.size or DEFAULT_SIZES[task]
    if h < 32 or w < 32:
        raise MdError(f"--size {w}x{h}: frames must be at least 32x32 (the backbone stride)")
    if kind == "teacher":
        factor = 1
    elif isinstance(model, OneStreamStudent) and model.norm.in_channels == 3:
        factor = 0
    else:
        factor = default_thermal_factor(ckpt)
    image_hw = (h, w)
    th_hw = thermal_size(image_hw, factor)
    graph = DeployGraph(model, kind, task, image_hw, th_hw, opts, onnx_nms).eval()
    meta = metadata(ckpt_path, ckpt, graph, factor, opts)
    return graph, meta


def metadata(
    ckpt_path: str | Path,
    ckpt: dict[str, Any],
    graph: DeployGraph,
    factor: int,
    opts: ExportOptions,
) -> dict[str, Any]:
    task = ckpt["task"]
    args = ckpt["model_args"]
    classes = list(MFNET_CLASSES) if task == "segmentation" else ["person"]
    model: dict[str, Any] = {"kind": ckpt["model_kind"], "width": args.get("width")}
    if ckpt["model_kind"] == "student":
        model.update(
            in_channels=args.get("in_channels"),
            levels=list(args.get("levels", [])),
            head_input=args.get("head_input"),
            distilled=bool(ckpt.get("config", {}).get("distill", False)),
        )
    return {
        "format": EXPORT_FORMAT,
        "md_version": __version__,
        "task": task,
        "num_classes": len(classes),
        "classes": classes,
        "model": model,
        "image_size": list(graph.image_hw),
        "thermal_factor": factor,
        "thermal_size": list(graph.thermal_hw) if graph.thermal_hw else None,
        "thermal_upsampling": "bilinear, align_corners=False (md.data.transforms.reduce_thermal)",
        "normalisation": {
            "input": "uint8 / 255",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "thermal": "duplicated to 3 channels",
            "stem": graph.stem,
        },
        "score_thresh": opts.score_thresh if task == "detection" else 0.0,
        "nms_iou": opts.nms_iou if task == "detection" else None,
        "max_det": opts.max_det if task == "detection" else None,
        "batch": opts.batch if opts.batch is not None else "dynamic",
        "inputs": graph.input_names(),
        "outputs": graph.output_names(),
        "checkpoint": Path(ckpt_path).name,
        "checkpoint_sha256": file_sha256(ckpt_path),
        "lineage": ckpt.get("lineage"),
        "dataset_sha256": (ckpt.get("dataset_fingerprint") or {}).get("sha256"),
        "int8": None,
    }


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """The tracer's notes on Python values it freezes (the fixed frame size, the anchors)
    and the legacy exporter's deprecation notice are expected here, not news."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(onnx|jit)")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """torch 2.13 marks torch.jit (script, trace, save, load) deprecated; the format still
    works and `md export --format torchscript` asks for it, so the notice is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def atomic_write(out: Path, write: Any) -> None:
    """`write(tmp_path)`, then rename onto `out`: the file appears complete or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_bytes(graph: DeployGraph, meta: dict[str, Any], batch: int | None) -> bytes:
    """The ONNX model (with metadata) of a deploy graph, serialised."""
    import onnx

    names_in, names_out = graph.input_names(), graph.output_names()
    dynamic: dict[str, dict[int, str]] | None = None
    if batch is None:
        dynamic = {n: {0: "N"} for n in names_in}
        dynamic.update({n: {0: "N"} for n in names_out if n in ("class_map", "logits")})
        dynamic.update({n: {0: "N"} for n in ("counts", "cls_logits", "box_deltas")})
        dynamic.update({n: {0: "S"} for n in ("boxes", "scores")})
        dynamic = {k: v for k, v in dynamic.items() if k in names_in + names_out}
    buf = io.BytesIO()
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            graph,
            graph.example_inputs(batch or 2),
            buf,  # type: ignore[arg-type]
            dynamo=False,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    set_onnx_metadata(proto, meta)
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def set_onnx_metadata(proto: Any, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    for key in ("task", "thermal_factor", "score_thresh", "checkpoint_sha256"):
        extra = proto.metadata_props.add()
        extra.key, extra.value = key, str(meta[key])
    proto.producer_name, proto.producer_version = "md", __version__


def torchscript_module(graph: DeployGraph, batch: int | None) -> torch.jit.ScriptModule:
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(graph, graph.example_inputs(batch or 2), check_trace=False)
    return traced


def export_checkpoint(
    ckpt_path: str | Path, out: str | Path, opts: ExportOptions
) -> dict[str, Any]:
    """Export a checkpoint to `out`; returns the metadata written into the file."""
    if opts.format not in FORMATS:
        raise MdError(f"--format must be one of {FORMATS}, got {opts.format!r}")
    if opts.batch is not None and opts.batch < 1:
        raise MdError(f"--batch must be 'dynamic' or a positive count, got {opts.batch}")
    if opts.format == "onnx":
        require_onnx()
    out = Path(out)
    graph, meta = build_graph(ckpt_path, opts, onnx_nms=opts.format == "onnx")
    if opts.format == "onnx":
        data = onnx_bytes(graph, meta, opts.batch)
        atomic_write(out, lambda p: p.write_bytes(data))
    else:
        module = torchscript_module(graph, opts.batch)
        extra = {TORCHSCRIPT_EXTRA: json.dumps(meta, sort_keys=True)}
        with quiet_torchscript():
            atomic_write(out, lambda p: torch.jit.save(module, str(p), _extra_files=extra))
    return meta
