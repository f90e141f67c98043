"""`md demo --quick` end to end: the report exists with its table and figures."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_quick_demo_writes_report_with_table_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    log = run_cli("demo", "--out", str(out), "--quick")
    report = out / "report.md"
    assert f"report: {report}" in log.splitlines()[-1]
    assert "[4/6 students" in log  # progress shown
    assert "note: --quick numbers are a smoke test" in log  # printed, not only in the report
    # stderr is no terminal here: each of the 3 bars (teacher, train and test cache) draws
    # its start and end, not every 0.1 s (32 redraws before, most for 30 teacher steps)
    assert log.count("\r") <= 12, log.count("\r")
    text = report.read_text()
    assert "> **Not a result.** --quick numbers are a smoke test" in text
    lines = text.splitlines()
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0].startswith("| Thermal resolution | MD |")
    for label in (
        "Full resolution",
        "4x downsample",
        "16x downsample",
        "64x downsample",
        "Visible-only",
    ):
        rows = [ln for ln in table if ln.startswith(f"| {label} |")]
        assert len(rows) == 2 and "–" not in rows[0] + rows[1], rows  # native and MD, scored
    assert any(ln.startswith("| Teacher") for ln in table)
    assert "bytes/sample" in text and "- failed" not in text
    for png in ("metric_vs_thermal_factor.png", "fig4_masks.png", "loss_curves.png"):
        assert f"]({png})" in text
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
