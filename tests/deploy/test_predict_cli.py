"""`md predict`: outputs that score like `md evaluate model`, the health records and the
fallback, atomic outputs, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from md.cli import main
from md.data import open_dataset
from md.deploy.predict import agreement_counts, failure_plan
from md.errors import MdError
from md.eval.model_eval import evaluate_model
from tests.conftest import one_torch_thread
from tests.deploy.test_predict_checkpoint import camera_frames


def md(*args: str | Path, expect: int = 0) -> str:
    with one_torch_thread():
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def error_line(*args: str | Path) -> str:
    # progress-bar lines (stderr) may come before the error: one line beside them
    lines = [x for x in md(*args, expect=2).splitlines() if not x.startswith("predict:")]
    out = "\n".join(lines).strip()
    assert len(out.splitlines()) == 1, out
    assert out.startswith("md: error: ")
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def test_detection_results_score_like_evaluate_model(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    ckpt = checkpoints[("detection", "md16")]
    out = tmp_path / "pred"
    text = md("predict", ckpt, "--data", synth_det, "--out", out, "--overlays", "2", "--score")
    closing = [line for line in text.splitlines() if "frames/s" in line]
    assert len(closing) == 1 and closing[0].startswith("4 frames in ")
    with one_torch_thread():
        expected = evaluate_model(ckpt, synth_det, device="cpu", save_results=tmp_path / "ev.txt")
    # the same detections, written by the same writer: the same bytes
    assert (out / "results.txt").read_bytes() == (tmp_path / "ev.txt").read_bytes()
    assert len((tmp_path / "ev.txt").read_text().splitlines()) > 10
    # The KAIST file rounds boxes to 1e-4 px and scores to 1e-8: a match could change only
    # for an IoU within ~1e-5 of the 0.5 threshold, so the rates agree exactly here.
    scored = json.loads(
        md(
            "evaluate",
            "kaist-results",
            out / "results.txt",
            "--annotations",
            synth_det / "annotations.json",
            "--image-size",
            "96x80",
            "--json",
        )
    )["miss_rate"]
    for subset in ("all", "day", "night"):
        assert scored[subset] == pytest.approx(expected["miss_rate"][subset], abs=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"]["miss_rate"] == expected["miss_rate"]
    recs = records(out)
    assert [r["index"] for r in recs] == [1, 2, 3, 4]
    assert all(r["health"] == "ok" and r["served_by"] == "primary" for r in recs)
    ids = [s.id for s in open_dataset(synth_det, split="test").samples]
    assert [r["id"] for r in recs] == ids
    assert len(list((out / "overlays").iterdir())) == 2
    assert not list(tmp_path.glob(".pred.tmp-*"))


def test_segmentation_pngs_in_palette_score_like_evaluate_model(
    checkpoints: dict, synth_seg: Path, tmp_path: Path
) -> None:
    ckpt = checkpoints[("segmentation", "trunk4")]
    out = tmp_path / "pred"
    md("predict", ckpt, "--data", synth_seg, "--out", out, "--overlays", "1")
    with one_torch_thread():
        expected = evaluate_model(ckpt, synth_seg, device="cpu", save_results=tmp_path / "ev")
    for png in (tmp_path / "ev").iterdir():
        with Image.open(out / "pred" / png.name) as ours, Image.open(png) as theirs:
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    report = json.loads(
        md(
            "evaluate",
            "mfnet-predictions",
            out / "pred",
            "--labels",
            synth_seg,
            "--list",
            synth_seg / "test.txt",
            "--json",
        )
    )
    assert report["mean_iou"] == pytest.approx(expected["mean_iou"])
    with Image.open(next((out / "pred").iterdir())) as img:
        assert img.mode == "P" and (img.getpalette() or [])[3:6] == [64, 0, 128]  # MFNet's "car"


def write_pairs(data: Path, root: Path, low: int | None = None) -> tuple[Path, Path]:
    """The test split as two folders of PNGs; thermal reduced to 1/low of the side."""
    vdir, tdir = root / "vis", root / "th"
    vdir.mkdir()
    tdir.mkdir()
    for s in open_dataset(data, split="test").samples:
        name = s.id.replace("/", "_")
        shutil.copy(s.visible_path, vdir / f"{name}.png")
        with Image.open(s.thermal_path) as img:
            th = img.convert("L")
        if low:
            th = th.resize((th.width // low, th.height // low), Image.Resampling.BILINEAR)
        th.save(tdir / f"{name}.png")
    return vdir, tdir


def test_folders_low_resolution_and_fallback(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    vdir, tdir = write_pairs(synth_det, tmp_path, low=4)  # md16: side / 4
    files = sorted(tdir.iterdir())
    files[1].unlink()  # missing
    with Image.open(files[2]) as img:
        size = img.size
    Image.new("L", size, 0).save(files[2])  # dead
    files[3].write_bytes(files[3].read_bytes()[:40])  # truncated: unreadable
    out = tmp_path / "pred"
    md(
        "predict",
        checkpoints[("detection", "md16")],
        "--visible-dir",
        vdir,
        "--thermal-dir",
        tdir,
        "--out",
        out,
        "--fallback",
        checkpoints[("detection", "visible")],
    )
    recs = records(out)
    assert [(r["health"], r["served_by"]) for r in recs] == [
        ("ok", "primary"),
        ("missing", "fallback"),
        ("dead", "fallback"),
        ("unreadable", "fallback"),
    ]
    assert recs[0]["model"] == "detection_md16.pt" and recs[1]["model"] == "detection_visible.pt"
    # without a fallback the unhealthy frames are reported and not predicted
    out2 = tmp_path / "pred2"
    md(
        "predict",
        checkpoints[("detection", "md16")],
        "--visible-dir",
        vdir,
        "--thermal-dir",
        tdir,
        "--out",
        out2,
    )
    recs2 = records(out2)
    assert [r["served_by"] for r in recs2] == ["primary", None, None, None]
    assert all(r["boxes"] == [] for r in recs2[1:]) and recs2[0]["boxes"] == recs[0]["boxes"]
    lines = (out2 / "results.txt").read_text().splitlines()
    assert lines and {line.split(",")[0] for line in lines} == {"1"}


def test_single_pair_full_size_equals_dataset(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    s = open_dataset(synth_det, split="test").samples[2]
    ckpt = checkpoints[("detection", "native64")]
    md(
        "predict",
        ckpt,
        "--visible",
        s.visible_path,
        "--thermal",
        s.thermal_path,
        "--out",
        tmp_path / "one",
    )
    md("predict", ckpt, "--data", synth_det, "--out", tmp_path / "all", "--batch-size", "1")
    assert records(tmp_path / "one")[0]["boxes"] == records(tmp_path / "all")[2]["boxes"]


def test_failure_plan_is_seeded_and_exact() -> None:
    plan = failure_plan(40, 0.3, seed=3)
    assert len(plan) == 12 and plan == failure_plan(40, 0.3, seed=3)
    assert plan != failure_plan(40, 0.3, seed=4)
    assert set(plan.values()) <= {"dead", "missing", "frozen"}


def test_simulated_failures_go_to_the_fallback(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sim"
    md(
        "predict",
        checkpoints[("detection", "md16")],
        "--data",
        synth_det,
        "--out",
        out,
        "--fallback",
        checkpoints[("detection", "visible")],
        "--simulate-failures",
        "0.5",
        "--seed",
        "1",
        "--frozen-k",
        "2",
    )
    plan = failure_plan(4, 0.5, seed=1)
    recs = records(out)
    for i, r in enumerate(recs):
        if i in plan:
            assert r["health"] == plan[i] and r["served_by"] == "fallback", (i, plan, r)
            assert r["simulated"] == plan[i]
        else:
            assert r["health"] == "ok" and r["served_by"] == "primary"
            assert "simulated" not in r


# --- bad input ------------------------------------------------------------------------------


def test_bad_inputs_are_one_line(
    checkpoints: dict, synth_det: Path, synth_seg: Path, tmp_path: Path
) -> None:
    det, seg = checkpoints[("detection", "md16")], checkpoints[("segmentation", "md16")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no visible images" in error_line(
        "predict", det, "--visible-dir", empty, "--thermal-dir", empty, "--out", tmp_path / "o"
    )
    assert "segmentation dataset, but the model is for detection" in error_line(
        "predict", det, "--data", synth_seg, "--out", tmp_path / "o"
    )
    assert "fallback is a segmentation model" in error_line(
        "predict", det, "--data", synth_det, "--fallback", seg, "--out", tmp_path / "o"
    )
    assert "--thermal-factor none" in error_line(
        "predict", det, "--data", synth_det, "--fallback", det, "--out", tmp_path / "o"
    )
    cut = tmp_path / "cut.pt"
    cut.write_bytes(det.read_bytes()[:1000])
    assert f"{cut}: not a readable md checkpoint" in error_line(
        "predict", cut, "--data", synth_det, "--out", tmp_path / "o"
    )
    assert not (tmp_path / "o").exists()


def test_wrong_thermal_size_leaves_nothing(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    vdir, tdir = write_pairs(synth_det, tmp_path)
    bad = sorted(tdir.iterdir())[2]
    Image.new("L", (30, 30), 9).save(bad)
    out = tmp_path / "o"
    msg = error_line(
        "predict",
        checkpoints[("detection", "md16")],
        "--visible-dir",
        vdir,
        "--thermal-dir",
        tdir,
        "--out",
        out,
    )
    assert str(bad) in msg and "30x30" in msg and "24x20 or 96x80" in msg
    assert not out.exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_wrong_modes_and_orphans(checkpoints: dict, synth_det: Path, tmp_path: Path) -> None:
    vdir, tdir = write_pairs(synth_det, tmp_path)
    det = checkpoints[("detection", "md16")]
    orphan = tdir / "zzz.png"
    Image.new("L", (96, 80)).save(orphan)
    assert f"{orphan}: thermal frame without a visible image" in error_line(
        "predict", det, "--visible-dir", vdir, "--thermal-dir", tdir, "--out", tmp_path / "o"
    )
    orphan.unlink()
    cmyk = sorted(tdir.iterdir())[0]
    Image.new("1", (96, 80)).save(cmyk)
    assert f"{cmyk}: thermal image has mode 1" in error_line(
        "predict", det, "--visible-dir", vdir, "--thermal-dir", tdir, "--out", tmp_path / "o"
    )
    v = sorted(vdir.iterdir())[0]
    Image.fromarray(np.zeros((80, 96), np.uint16)).save(v)  # 16-bit gray: mode I;16
    assert f"{v}: visible image has mode I;16" in error_line(
        "predict",
        det,
        "--visible",
        v,
        "--thermal",
        sorted(tdir.iterdir())[1],
        "--out",
        tmp_path / "o",
    )


def test_existing_output_is_refused(checkpoints: dict, synth_det: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "not an empty folder" in error_line(
        "predict", checkpoints[("detection", "md16")], "--data", synth_det, "--out", out
    )
    assert (out / "keep.txt").read_text() == "mine"


def test_agreement_counts_on_hand_built_boxes() -> None:
    def dets(*boxes: tuple[float, float, float, float, float]) -> dict:
        a = np.array(boxes, np.float32).reshape(-1, 5)
        return {"boxes": a[:, :4], "scores": a[:, 4]}

    a = dets((0, 0, 10, 10, 0.9), (20, 20, 30, 30, 0.8), (50, 50, 60, 60, 0.1))
    b = dets((0, 0, 10, 12, 0.7), (40, 40, 45, 45, 0.6))  # IoU 100/120 with a's first box
    assert agreement_counts("detection", a, b, 0.3) == (2, 4)  # 1 match; 2 + 2 boxes counted
    assert agreement_counts("detection", a, a, 0.3) == (4, 4)
    assert agreement_counts("detection", a, dets(), 0.3) == (0, 2)
    assert agreement_counts("detection", dets(), dets(), 0.3) == (0, 0)
    # one box of b cannot match two of a
    twin = dets((0, 0, 10, 10, 0.9), (0, 0, 10, 10, 0.8))
    assert agreement_counts("detection", twin, dets((0, 0, 10, 10, 0.9)), 0.3) == (2, 3)
    x = np.array([[0, 1], [2, 3]], np.uint8)
    assert agreement_counts("segmentation", x, np.array([[0, 1], [2, 0]], np.uint8)) == (3, 4)


def test_shadow_agreement_and_nan_thermal(
    checkpoints: dict, synth_det: Path, tmp_path: Path
) -> None:
    vdir, tdir = write_pairs(synth_det, tmp_path)
    first = sorted(tdir.iterdir())[0]
    with Image.open(first) as img:
        frame = np.asarray(img, np.float32) / 255
    frame[3, 3] = np.nan
    np.save(tdir / f"{first.stem}.npy", frame)
    first.unlink()
    out = tmp_path / "o"
    text = md(
        "predict",
        checkpoints[("detection", "md16")],
        "--visible-dir",
        vdir,
        "--thermal-dir",
        tdir,
        "--out",
        out,
        "--fallback",
        checkpoints[("detection", "visible")],
        "--shadow",
        "--agree-score",
        "0.01",
    )
    recs = records(out)
    assert recs[0]["health"] == "nonfinite" and recs[0]["served_by"] == "fallback"
    assert "agreement" not in recs[0]
    assert all(0 <= r["agreement"] <= 1 for r in recs[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agreement"]["frames"] == 3 and summary["agreement"]["compared"] > 0
    assert "agreement with the fallback on 3 healthy frames" in text


class FixedSizeStub:
    """A predictor fixed to 96x80 with 24x20 thermal (what an exported file declares)."""

    def __init__(self, path: str) -> None:
        from md.deploy.runtime import ModelInfo

        self.info = ModelInfo("detection", 1, (80, 96), (20, 24), 16, 0.01, "onnx", path, "0" * 64)
        self.thermal: list[np.ndarray] = []

    def predict(self, visible: np.ndarray, thermal: np.ndarray | None) -> list:
        assert thermal is not None
        self.thermal.append(thermal)
        return [
            {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32)}
            for _ in visible
        ]


def test_fixed_size_model_gets_camera_size_thermal(
    synth_det: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import md.deploy.predict as predict

    stub = FixedSizeStub("m.onnx")
    monkeypatch.setattr(predict, "open_predictor", lambda path, **kw: stub)
    predict.run(
        predict.PredictConfig(
            model="m.onnx", out=str(tmp_path / "o"), data=str(synth_det), progress=False
        )
    )
    fed = np.concatenate(stub.thermal)
    assert fed.shape == (4, 1, 20, 24) and fed.dtype == np.uint8
    _, full = [torch.from_numpy(a.astype(np.float32) / 255) for a in camera_frames(synth_det)]
    low = torch.nn.functional.interpolate(full, size=(20, 24), mode="bilinear", align_corners=False)
    assert np.abs(fed.astype(np.float64) - low.numpy() * 255).max() <= 0.5 + 1e-3
    # a visible frame of another size is refused, naming the file
    vdir, tdir = write_pairs(synth_det, tmp_path)
    v = sorted(vdir.iterdir())[0]
    Image.new("RGB", (64, 64)).save(v)
    with pytest.raises(MdError, match=r"visible frame is 64x64 but m\.onnx was exported for 96x80"):
        predict.run(
            predict.PredictConfig(
                model="m.onnx",
                out=str(tmp_path / "o2"),
                visible_dir=str(vdir),
                thermal_dir=str(tdir),
                progress=False,
            )
        )
    assert not (tmp_path / "o2").exists()
