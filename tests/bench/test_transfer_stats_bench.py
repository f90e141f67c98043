"""bench/transfer_stats.py: first / last values, norm ratios and transfer-to-task ratios of a
hand-written training log."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_summary_of_a_hand_written_log(tmp_path: Path) -> None:
    log = tmp_path / "md_s0.metrics.jsonl"
    recs = [
        {"iteration": 0, "loss/task": 2.0, "loss/attention": 0.5, "loss/semantic": 8.0,
         "stats/c3/teacher_rms": 4.0, "stats/c3/student_rms": 1.0, "stats/c3/head_rms": 2.0},
        {"iteration": 10, "loss/task": 1.0, "loss/attention": 0.25, "loss/semantic": 2.0,
         "stats/c3/teacher_rms": 4.0, "stats/c3/student_rms": 3.0, "stats/c3/head_rms": 5.0},
        {"kind": "loader", "iteration": 11, "batches": 11},
    ]  # fmt: skip
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "md_s0.config.yaml").write_text("attention_weight: 2.0\nsemantic_weight: 0.5\n")
    mod = runpy.run_path(str(REPO / "bench" / "transfer_stats.py"))
    s = mod["summarise_log"](log, window=2)
    assert s["records"] == 2 and s["lambda"] == [2.0, 0.5]
    assert s["losses"]["semantic"]["first"] == 8.0 and s["losses"]["semantic"]["last"] == 2.0
    assert s["losses"]["task"]["last_window_mean"] == pytest.approx(1.5)
    # (λ_A · attention + λ_S · semantic) / task: (1 + 4) / 2 then (0.5 + 1) / 1
    assert s["transfer_to_task"]["first"] == pytest.approx(2.5)
    assert s["transfer_to_task"]["last"] == pytest.approx(1.5)
    c3 = s["levels"]["c3"]
    assert c3["student_to_teacher_rms"]["first"] == pytest.approx(0.25)
    assert c3["head_to_teacher_rms"]["last"] == pytest.approx(1.25)
    assert "c3" in mod["table"](s)
