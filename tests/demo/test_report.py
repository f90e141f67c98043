"""report.md of `md demo`: the --quick smoke-test caveat (fake records, no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from md import demo


def record(factor: str, variant: str, miss: float) -> dict[str, Any]:
    return {
        "key": f"detection/{variant}/tf{factor}/s0",
        "task": "detection",
        "factor": factor,
        "variant": variant,
        "seed": 0,
        "miss_rate": {"day": miss, "night": miss, "all": miss},
    }


def report(quick: bool) -> str:
    cfg = demo.DemoConfig(quick=quick, factors=("16",))
    size = demo.SIZES["quick" if quick else "default"]
    records = [record("16", "native", 100.0), record("16", "md", 100.0)]
    teacher = {"miss_rate": {"day": 99.0, "night": 98.0, "all": 98.5}}
    figs = {k: Path(f"{k}.png") for k in ("factor", "fig4", "loss")}
    return demo.report_text(cfg, size, records, teacher, "store line", figs, {"teacher": 1.0})


def test_quick_report_says_its_numbers_are_a_smoke_test_before_the_table() -> None:
    text = report(quick=True)
    caveat = text.index("smoke test")
    assert caveat < text.index("| Thermal resolution")  # read before the numbers
    assert "without --quick for the real table" in text
    assert "32 training images, a 30-iteration teacher and 10-iteration students" in text
    assert "| 16x downsample | ✓ | 100.00 | 100.00 | 100.00 | 1 |" in text  # digits as before


def test_full_report_has_no_caveat() -> None:
    text = report(quick=False)
    assert "smoke test" not in text and "--quick" not in text
    assert "| 16x downsample |  | 100.00 | 100.00 | 100.00 | 1 |" in text
