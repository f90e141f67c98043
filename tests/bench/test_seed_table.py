"""bench/seed_table.py: mean ± SE of hand-written evaluation files."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from tests.conftest import REPO


def _eval(path: Path, acc: float, iou: float) -> None:
    path.write_text(json.dumps({"mean_accuracy": {"all": acc}, "mean_iou": {"all": iou}}))


def test_mean_and_standard_error_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for s, (acc, iou) in enumerate([(40.0, 20.0), (44.0, 22.0), (48.0, 21.0)]):
        _eval(tmp_path / f"md_s{s}.eval.json", acc, iou)
    mod = runpy.run_path(str(REPO / "bench" / "seed_table.py"))
    a = mod["arm"]("MD", str(tmp_path / "md_s*.eval.json"))
    assert a["mean_accuracy"]["per_seed"] == [40.0, 44.0, 48.0]
    assert a["mean_accuracy"]["mean"] == pytest.approx(44.0)
    assert a["mean_accuracy"]["se"] == pytest.approx(4.0 / math.sqrt(3))  # std 4 over 3 seeds
    assert a["mean_iou"]["mean"] == pytest.approx(21.0)
    assert mod["arm"]("none", str(tmp_path / "x_*.json"))["missing"]
    assert mod["main"]([f"MD={tmp_path}/md_s*.eval.json"]) == 0
    assert "| MD | 44.00±2.31 (40.00 / 44.00 / 48.00) | 21.00±0.58 | 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="LABEL=GLOB"):
        mod["main"](["no-equals-sign"])
    (tmp_path / "cut_s0.eval.json").write_text("")  # an evaluation still writing its output
    with pytest.raises(SystemExit, match=r"cut_s0\.eval\.json: not JSON"):
        mod["arm"]("cut", str(tmp_path / "cut_s*.eval.json"))
