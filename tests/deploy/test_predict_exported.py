"""`md predict` and `md evaluate model --corrupt` of an exported file give the checkpoint's
results. A visible-only student is used: its 8-bit camera frames are exact, so the only
difference left is the float arithmetic of the graph (logits within ~1e-6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import one_torch_thread, run_cli
from tests.deploy.conftest import make_checkpoint

pytest.importorskip("onnx", reason="the export extra: pip install 'md[export]'")


def test_exported_file_predicts_and_scores_like_its_checkpoint(
    tmp_path: Path, synth_seg: Path
) -> None:
    ckpt = make_checkpoint(tmp_path / "vis.pt", "visible", "segmentation")
    onnx_file = tmp_path / "vis.onnx"
    with one_torch_thread():
        run_cli("export", str(ckpt), "--format", "onnx", "--out", str(onnx_file),
                "--size", "96x64")  # fmt: skip
        # the exported file serves, its own checkpoint shadows it: their agreement
        out = tmp_path / "o"
        run_cli("predict", str(onnx_file), "--data", str(synth_seg), "--out", str(out),
                "--fallback", str(ckpt), "--shadow", "--score")  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"]["format"] == "onnx" and summary["served"] == {"primary": 4}
        # float ties aside, every pixel has the same class (4 x 96 x 64 pixels compared)
        assert summary["agreement"]["compared"] == 4 * 96 * 64
        assert summary["agreement"]["value"] >= 0.999
        ref = tmp_path / "r"
        run_cli("predict", str(ckpt), "--data", str(synth_seg), "--out", str(ref), "--score")
        want = json.loads((ref / "summary.json").read_text())["metric"]["mean_iou"]
        assert summary["metric"]["mean_iou"]["all"] == pytest.approx(want["all"], abs=0.1)
        # --corrupt reaches the exported graph through evaluate_predictor
        got = [
            json.loads(
                run_cli(
                    "evaluate",
                    "model",
                    str(m),
                    "--data",
                    str(synth_seg),
                    "--corrupt",
                    "fog:4",
                    "--json",
                )
            )
            for m in (onnx_file, ckpt)
        ]
    assert got[0]["format"] == "onnx" and got[0]["corruption"] == got[1]["corruption"] == "fog:4"
    assert got[0]["mean_iou"]["all"] == pytest.approx(got[1]["mean_iou"]["all"], abs=0.1)
    clean = json.loads(run_cli("evaluate", "model", str(ckpt), "--data", str(synth_seg), "--json"))
    assert clean["mean_accuracy"] != got[1]["mean_accuracy"]  # the fog did change the inputs
