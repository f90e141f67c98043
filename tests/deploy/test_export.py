"""`md export`: the exported graphs (ONNX through ONNX Runtime, TorchScript) against the
checkpoint they come from, on the same uint8 camera frames.

Tolerances: ONNX Runtime and torch compute the same float32 network in different orders
(other conv kernels, the folded stem, matrix-product pooling). Each result is measured
against the checkpoint's forward in float64; the export may be off by at most 4x what
torch's own float32 forward is off on this CPU (`tests.fp.float32_error`): both are sums of
the same products in some order, whose rounding bound (Higham's gamma_n) is the same for any
order, so neither kernel may be worse than a small multiple of the other (measured: 0.8-1.2x).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from md.deploy.evaluate import evaluate_predictor
from md.deploy.export import ExportOptions, export_checkpoint, quiet_torchscript
from md.deploy.exported import open_exported
from md.errors import MdError
from md.models.checkpoint import file_sha256
from md.models.heads.boxes import box_area, box_iou, clip_boxes, decode
from tests.conftest import one_torch_thread, run_cli
from tests.deploy.exporting import KINDS, camera_frames, make_checkpoint, reference_pred
from tests.fp import U32, float32_error

onnx = pytest.importorskip("onnx", reason="the export extra: pip install 'md[export]'")

SIZE = (96, 64)  # W x H: thermal factor 64 still gives a 12x8 camera
FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {name: make_checkpoint(root / f"{name}.pt", name) for name in KINDS}


def _export(ckpt: Path, out: Path, fmt: str, **kw: object) -> dict:
    return export_checkpoint(ckpt, out, ExportOptions(format=fmt, size=SIZE, logits=True, **kw))


def _logit_keys(task: str) -> tuple[str, ...]:
    return ("logits",) if task == "segmentation" else ("cls_logits", "box_deltas")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(KINDS))
def test_exported_logits_match_the_checkpoint(ckpts, tmp_path, name, fmt):
    out = tmp_path / f"m{SUFFIX[fmt]}"
    meta = _export(ckpts[name], out, fmt)
    pred = open_exported(out)
    vis, th = camera_frames(3, (SIZE[1], SIZE[0]), pred.info.thermal_size)
    raw = pred._run(pred.check_frames(vis, th))
    _, p32 = reference_pred(ckpts[name], vis, th, torch.float32)
    _, p64 = reference_pred(ckpts[name], vis, th, torch.float64)
    for key in _logit_keys(meta["task"]):
        got = torch.from_numpy(raw[meta["outputs"].index(key)]).double()
        assert got.shape == p64[key].shape, key
        err = float((got - p64[key]).abs().max())
        assert err <= 4 * float32_error(p32[key], p64[key]), (key, err)
    if meta["task"] == "segmentation":  # the class map is the argmax, bar near-ties
        cmap = pred.predict(vis, th)
        assert cmap.dtype == np.uint8 and cmap.shape == (3, SIZE[1], SIZE[0])
        top2 = p64["logits"].topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 8 * float32_error(p32["logits"], p64["logits"])
        want = p64["logits"].argmax(dim=1).numpy()
        assert clear.float().mean() > 0.99
        np.testing.assert_array_equal(cmap[clear.numpy()], want[clear.numpy()])


def _float_tie(model, p64, thr: float, box_tol: float, score_tol: float) -> str | None:
    """Where, if anywhere, float32 rounding may change NMS's answer (judged in float64): a
    score within `score_tol` of the threshold, two candidates' IoU within the IoU tolerance
    of 0.5, or two candidates that suppress each other with scores within 2 `score_tol`."""
    head = model.head
    scores = p64["cls_logits"][..., 0].sigmoid()
    anchors = p64["anchors"].double()
    for i, (s, d) in enumerate(zip(scores, p64["box_deltas"], strict=True)):
        boxes = clip_boxes(decode(d, anchors, head.box_std), p64["image_size"])
        if float((s - thr).abs().min()) <= score_tol:
            return f"image {i}: a score at the threshold"
        cand = (s > thr) & (box_area(boxes) > 0)
        b, sc = boxes[cand], s[cand]
        side = float(torch.cat([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]).min())
        iou_tol = 8 * box_tol / side  # each coordinate off by box_tol moves an IoU this much
        iou = box_iou(b, b)
        pair = torch.ones_like(iou, dtype=torch.bool).triu(diagonal=1)
        if bool(((iou - 0.5).abs() <= iou_tol)[pair].any()):
            return f"image {i}: an IoU at 0.5"
        gaps = (sc[:, None] - sc[None, :]).abs()[pair & (iou > 0.5)]
        if len(gaps) and float(gaps.min()) <= 2 * score_tol:
            return f"image {i}: overlapping boxes of equal score"
    return None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(k for k in KINDS if k.startswith("det")))
def test_boxes_after_nms_are_the_checkpoints(ckpts, tmp_path, name, fmt):
    """The graph's NMS output is torch's `predict` (same boxes, same scores), unless a float
    tie makes either answer right (`_float_tie`): frames are drawn until a batch has none."""
    thr = 0.95
    out = tmp_path / f"m{SUFFIX[fmt]}"
    _export(ckpts[name], out, fmt, score_thresh=thr)
    pred = open_exported(out)
    ties = []
    for seed in range(1, 9):
        vis, th = camera_frames(3, (SIZE[1], SIZE[0]), pred.info.thermal_size, seed=seed)
        model, p32 = reference_pred(ckpts[name], vis, th, torch.float32)
        _, p64 = reference_pred(ckpts[name], vis, th, torch.float64)
        std = model.head.box_std
        boxes32 = decode(p32["box_deltas"], p32["anchors"], std)
        boxes64 = decode(p64["box_deltas"], p64["anchors"].double(), std)
        box_tol = 4 * float32_error(boxes32, boxes64)
        score_tol = 4 * float32_error(p32["cls_logits"], p64["cls_logits"]) / 4 + 4 * U32
        tie = _float_tie(model, p64, thr, box_tol, score_tol)
        if tie is None:
            break
        ties.append(tie)
    else:
        pytest.skip(f"float ties in every batch tried: {ties}")
    got = pred.predict(vis, th)
    want = model.head.predict(p32, score_thresh=thr)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert g["boxes"].dtype == np.float32 and g["scores"].dtype == np.float32
        assert 0 < len(g["boxes"]) == len(w["boxes"])
        order_g, order_w = np.argsort(-g["scores"]), torch.argsort(-w["scores"]).numpy()
        np.testing.assert_allclose(
            g["boxes"][order_g], w["boxes"].numpy()[order_w], rtol=0, atol=2 * box_tol
        )
        np.testing.assert_allclose(
            g["scores"][order_g], w["scores"].numpy()[order_w], rtol=0, atol=2 * score_tol
        )


def test_metadata_records_the_checkpoint_and_camera(ckpts, tmp_path):
    out = tmp_path / "m.onnx"
    _export(ckpts["det_md"], out, "onnx", batch=2)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = json.loads(props["md"])
    assert meta["task"] == props["task"] == "detection" and meta["classes"] == ["person"]
    assert meta["thermal_factor"] == 16 and meta["thermal_size"] == [16, 24]
    assert meta["image_size"] == [64, 96] and meta["batch"] == 2
    assert meta["normalisation"]["stem"] == "folded" and meta["score_thresh"] == 0.01
    assert meta["checkpoint_sha256"] == file_sha256(ckpts["det_md"])
    assert meta["lineage"]["teacher_sha256"] == "ab" * 32
    info = open_exported(out).info
    assert (info.format, info.image_size, info.thermal_size) == ("onnx", (64, 96), (16, 24))
    assert info.sha256 == file_sha256(out) and info.meta == meta
    ts = tmp_path / "m.ts"
    _export(ckpts["seg_visible"], ts, "torchscript")
    tinfo = open_exported(ts).info
    assert tinfo.task == "segmentation" and tinfo.num_classes == 9 and not tinfo.uses_thermal
    assert tinfo.meta["classes"][0] == "unlabeled" and tinfo.thermal_size is None


def test_trunk_students_export_without_transfer_modules(ckpts, tmp_path):
    for name, fmt in (("det_trunk", "onnx"), ("det_md", "onnx"), ("det_trunk", "torchscript")):
        out = tmp_path / f"{name}{SUFFIX[fmt]}"
        _export(ckpts[name], out, fmt)
        if fmt == "onnx":
            names = [t.name for t in onnx.load(str(out)).graph.initializer]
            names += [n.name for n in onnx.load(str(out)).graph.node]
        else:
            with quiet_torchscript():
                names = list(torch.jit.load(str(out)).state_dict())
        has = any("semantic_transfer" in n or "attention_transfer" in n for n in names)
        assert has == (name == "det_md"), (name, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixed_batch_graphs_serve_any_number_of_frames(ckpts, tmp_path, fmt):
    fixed, dynamic = tmp_path / f"f{SUFFIX[fmt]}", tmp_path / f"d{SUFFIX[fmt]}"
    _export(ckpts["seg_md"], fixed, fmt, batch=2)
    _export(ckpts["seg_md"], dynamic, fmt)
    a, b = open_exported(fixed), open_exported(dynamic)
    vis, th = camera_frames(3, (SIZE[1], SIZE[0]), a.info.thermal_size)
    np.testing.assert_array_equal(a.predict(vis, th), b.predict(vis, th))
    det = tmp_path / f"det{SUFFIX[fmt]}"
    _export(ckpts["det_native"], det, fmt, batch=2)
    p = open_exported(det)
    vis, th = camera_frames(3, (SIZE[1], SIZE[0]), p.info.thermal_size)
    one_by_one = [p.predict(vis[i : i + 1], th[i : i + 1])[0] for i in range(3)]
    for x, y in zip(p.predict(vis, th), one_by_one, strict=True):
        np.testing.assert_array_equal(x["boxes"], y["boxes"])


def test_without_onnx_the_error_names_the_extra(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = tmp_path / "m.onnx"
    err = run_cli("export", str(ckpts["det_md"]), "--out", str(out), "--size", "96x64", expect=2)
    assert "pip install 'md[export]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_files_and_frames_are_one_line_errors(ckpts, tmp_path):
    good = tmp_path / "m.onnx"
    _export(ckpts["det_md"], good, "onnx")
    ts = tmp_path / "m.ts"
    _export(ckpts["det_md"], ts, "torchscript")
    for src, name in ((good, "cut.onnx"), (ts, "cut.ts")):
        cut = tmp_path / name
        cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        with pytest.raises(MdError, match=r"cut\.(onnx|ts): not a readable .*md export"):
            open_exported(cut)
    with pytest.raises(MdError, match="not an exported model"):
        open_exported(ckpts["det_md"])
    with pytest.raises(MdError, match="detection model, not segmentation"):
        open_exported(good, task="segmentation")
    pred = open_exported(good)
    vis, th = camera_frames(1, (64, 96), (16, 24))
    with pytest.raises(MdError, match=r"m\.onnx: visible frames are .*--size 128x64"):
        pred.predict(np.zeros((1, 3, 64, 128), np.uint8), th)
    with pytest.raises(MdError, match="takes 1 channel at 24x16"):
        pred.predict(vis, np.zeros((1, 1, 64, 96), np.uint8))
    with pytest.raises(MdError, match="uint8"):
        pred.predict(vis.astype(np.float32), th)
    with pytest.raises(MdError, match="needs thermal frames"):
        pred.predict(vis, None)


def test_a_failed_export_leaves_no_file(ckpts, tmp_path, monkeypatch):
    import md.deploy.export as ex

    def boom(*a, **k):
        raise RuntimeError("disk went away")

    out = tmp_path / "m.ts"
    monkeypatch.setattr(ex.torch.jit, "save", boom)
    with pytest.raises(RuntimeError):
        _export(ckpts["det_md"], out, "torchscript")
    assert list(tmp_path.iterdir()) == []


class _CheckpointOnCameraFrames:
    """The checkpoint itself, fed the same uint8 camera frames as its export (the reference
    for a student whose thermal the camera gives at low resolution, rounded to uint8)."""

    def __init__(self, ckpt: Path, info) -> None:
        self.ckpt, self.info = ckpt, info

    def predict(self, visible, thermal):
        model, pred = reference_pred(self.ckpt, visible, thermal, torch.float32)
        if self.info.task == "segmentation":
            return model.head.predict(pred).to(torch.uint8).numpy()
        out = model.head.predict(pred, score_thresh=self.info.score_thresh)
        return [{k: v.numpy() for k, v in p.items()} for p in out]


def _metrics(result: dict) -> dict[str, float]:
    keys = ("miss_rate",) if result["task"] == "detection" else ("mean_iou", "mean_accuracy")
    return {f"{k}/{s}": result[k][s] for k in keys for s in ("all", "day", "night")}


@pytest.mark.parametrize("factor", ["none", "16"])
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_md_evaluate_model_of_the_export_equals_the_checkpoint(
    synth_seg, synth_det, tmp_path, task, factor
):
    """Short-trained students: `md evaluate model` of the ONNX and TorchScript files within
    0.1 points of the checkpoint's. A visible-only student is compared with `md evaluate
    model CHECKPOINT` itself (8-bit frames are exact in uint8). With thermal factor 16 the
    export sees what the camera gives, the low-resolution thermal rounded to uint8, which
    `md evaluate model CHECKPOINT` never rounds: it is compared with the checkpoint on those
    same frames (the rounding alone moved the 4-image mIoU by 0.12 points here). The tiny
    detection students miss every pedestrian (100 %), so for detection this checks the
    plumbing; `test_boxes_after_nms_are_the_checkpoints` checks the boxes themselves."""
    data, size = (synth_seg, "96x64") if task == "segmentation" else (synth_det, "96x80")
    ckpt = tmp_path / "s.pt"
    run_cli("train-student", "--data", str(data), "--out", str(ckpt), "--no-distill",
            "--thermal-factor", factor, "--preset", "cpu-tiny", "batch_size=2",
            "progress=false", "iterations=12")  # fmt: skip
    ref = json.loads(run_cli("evaluate", "model", str(ckpt), "--data", str(data), "--json"))
    for fmt in FORMATS:
        out = tmp_path / f"s{SUFFIX[fmt]}"
        run_cli("export", str(ckpt), "--format", fmt, "--out", str(out), "--size", size)
        got = json.loads(run_cli("evaluate", "model", str(out), "--data", str(data), "--json"))
        assert got["format"] == fmt and got["exported_from_sha256"] == file_sha256(ckpt)
        assert got["samples"] == ref["samples"] and str(got["thermal_factor"]) == factor
        want = ref
        if factor != "none":
            camera = _CheckpointOnCameraFrames(ckpt, open_exported(out).info)
            want = evaluate_predictor(camera, data)
        for key, value in _metrics(want).items():
            assert _metrics(got)[key] == pytest.approx(value, abs=0.1), key
    other = "none" if factor == "16" else "16"
    err = run_cli("evaluate", "model", str(out), "--data", str(data), "--thermal-factor", other,
                  expect=2)  # fmt: skip
    assert "the exported graph takes thermal factor" in err
    if task == "segmentation":
        assert 0 < ref["mean_iou"]["all"] < 100  # a metric that can move
        err = run_cli("evaluate", "model", str(out), "--data", str(synth_det), expect=2)
        assert "segmentation model cannot be evaluated" in err
