"""`md export --int8`: static QDQ int8 through ONNX Runtime, calibrated on a dataset's train
split or a store's bundled inputs; and the exported rows of `md bench latency`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from md.deploy.exported import open_exported
from tests.conftest import one_torch_thread, run_cli
from tests.student_train.caching import cache

onnx = pytest.importorskip("onnx", reason="the export extra: pip install 'md[export]'")

TINY = ("--preset", "cpu-tiny", "batch_size=2", "progress=false")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def seg_student(synth_seg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "seg.pt"
    run_cli("train-student", "--data", str(synth_seg), "--out", str(out), "--no-distill",
            "--thermal-factor", "16", *TINY, "iterations=12")  # fmt: skip
    return out


def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_from_a_dataset_is_smaller_and_scores_within_a_point(seg_student, synth_seg, tmp_path):
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    run_cli("export", str(seg_student), "--out", str(fp32), "--size", "96x64")
    meta = json.loads(
        run_cli(
            "export",
            str(seg_student),
            "--out",
            str(int8),
            "--size",
            "96x64",
            "--int8",
            "--calib",
            str(synth_seg),
            "--calib-samples",
            "5",
            "--json",
        )
    )
    assert meta["int8"]["calibration"] == {
        "source": "dataset",
        "location": str(synth_seg),
        "frames": 5,
    }
    info = open_exported(int8).info
    assert info.format == "onnx-int8" and info.meta["int8"]["format"] == "QDQ"
    ops = _ops(int8)
    convs = _ops(fp32)["Conv"]
    # every conv's weight and input are quantized: per-channel weights, uint8 activations
    assert ops["Conv"] == convs and ops["DequantizeLinear"] >= 2 * convs
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    ref = json.loads(run_cli("evaluate", "model", str(fp32), "--data", str(synth_seg), "--json"))
    got = json.loads(run_cli("evaluate", "model", str(int8), "--data", str(synth_seg), "--json"))
    assert got["format"] == "onnx-int8"
    for key in ("mean_iou", "mean_accuracy"):
        assert abs(got[key]["all"] - ref[key]["all"]) <= 1.0, key


def test_int8_keeps_box_decoding_and_nms_in_float(synth_det, tmp_path):
    ckpt = tmp_path / "det.pt"
    run_cli("train-student", "--data", str(synth_det), "--out", str(ckpt), "--no-distill",
            "--thermal-factor", "none", *TINY, "iterations=2")  # fmt: skip
    out = tmp_path / "det.int8.onnx"
    run_cli("export", str(ckpt), "--out", str(out), "--size", "96x80", "--int8",
            "--calib", str(synth_det), "--calib-samples", "3")  # fmt: skip
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    assert producers[nms.input[0]].op_type != "DequantizeLinear"  # float boxes
    pred = open_exported(out)
    boxes = pred.predict(np.zeros((2, 3, 80, 96), np.uint8), None)
    assert len(boxes) == 2 and all(b["boxes"].dtype == np.float32 for b in boxes)


def test_int8_from_a_store_with_bundled_inputs(synth_det, tmp_path):
    teacher = tmp_path / "teacher.pt"
    run_cli("train-teacher", "--data", str(synth_det), "--out", str(teacher), "--task",
            "detection", *TINY, "iterations=1")  # fmt: skip
    store = cache(
        teacher, synth_det, tmp_path / "s.zarr", "--bundle-inputs", "--thermal-factor", "16"
    )
    student = tmp_path / "md.pt"
    run_cli("train-student", "--store", str(store), "--out", str(student), *TINY,
            "iterations=2")  # fmt: skip
    out = tmp_path / "md.int8.onnx"
    meta = json.loads(
        run_cli(
            "export",
            str(student),
            "--out",
            str(out),
            "--size",
            "96x80",
            "--int8",
            "--calib",
            str(store),
            "--json",
        )
    )
    assert meta["int8"]["calibration"]["source"] == "store"
    assert meta["int8"]["calibration"]["frames"] == 8  # all the store holds
    assert meta["lineage"]["store"]["url"] == str(store)
    wrong = run_cli("export", str(student), "--out", str(tmp_path / "x.onnx"), "--size",
                    "128x96", "--int8", "--calib", str(store), expect=2)  # fmt: skip
    assert "bundled inputs are 96x80" in wrong and "calibrate with --calib DATASET" in wrong
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--int8", "--format", "torchscript", "--calib", "x"), "use --format onnx"),
        (("--int8",), "--int8 needs calibration inputs"),
        (("--calib", "x"), "--calib only applies with --int8"),
    ],
)
def test_int8_option_errors(seg_student, tmp_path, args, fragment):
    err = run_cli("export", str(seg_student), "--out", str(tmp_path / "m.onnx"), *args, expect=2)
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_int8_refuses_a_dataset_of_the_other_task(seg_student, synth_det, tmp_path):
    err = run_cli("export", str(seg_student), "--out", str(tmp_path / "m.onnx"), "--size",
                  "96x64", "--int8", "--calib", str(synth_det), expect=2)  # fmt: skip
    assert "detection dataset cannot calibrate a segmentation model" in err


def test_bench_latency_exported_rows():
    out = run_cli("bench", "latency", "--size", "64x64", "--width", "0.125", "--head-channels",
                  "16", "--warmup", "0", "--repeats", "1", "--threads", "1", "--exported",
                  "--exported-threads", "1", "--json")  # fmt: skip
    r = json.loads(out[out.index("{") :])["exported"]
    assert set(r["models"]) == {"md_student", "visible_only_student"}
    for m in r["models"].values():
        row = m["threads"]["1"]
        assert {"torch_fp32", "onnx_fp32", "onnx_int8"} <= set(row)
        assert all(row[k]["median_ms"] > 0 for k in ("torch_fp32", "onnx_fp32", "onnx_int8"))
        assert 0 < m["bytes"]["onnx_int8"] < m["bytes"]["onnx_fp32"]
