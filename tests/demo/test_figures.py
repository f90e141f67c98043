"""The demo's figures, built from small fake inputs and checked as matplotlib figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from md import demo
from tests.demo.test_report import record

FACTORS = ("1", "4", "16", "64", "none")


def test_percent_limits_follow_the_data_inside_0_100() -> None:
    assert demo.percent_limits([20.0, 40.0], headroom=0) == pytest.approx((18.0, 42.0))
    assert demo.percent_limits([100.0, 100.0], headroom=0) == (99.0, 100.0)  # >= 1 point
    assert demo.percent_limits([0.5, float("nan")], headroom=0) == (0.0, 1.5)  # NaN: not run
    assert demo.percent_limits([]) == pytest.approx((-4.0, 104.0))
    assert demo.percent_limits([100.0]) == pytest.approx((98.96, 100.04))  # 4 % of the span


def test_factor_plot_y_axis_spans_the_data_not_past_100() -> None:
    records = [
        record(f, v, 90.0 + 2 * i + (v == "md"))
        for i, f in enumerate(FACTORS)
        for v in ("native", "md")
    ]  # 90 .. 99
    teacher = {"miss_rate": {"day": 100.0, "night": 100.0, "all": 100.0}}
    fig = demo.factor_plot(records, "detection", FACTORS, teacher)
    lo, hi = fig.axes[0].get_ylim()
    assert (lo, hi) == pytest.approx((89.0 - 0.44, 100.44))  # 89..100, 4 % headroom
    assert all(ax.get_ylim() == (lo, hi) for ax in fig.axes)  # shared by the 3 panels
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["native", "MD", "teacher"]


def test_factor_plot_of_a_quick_run_has_no_ticks_past_100() -> None:
    # every cell 100.00 (a --quick run): autoscale spread the axis to 94.5-105.5 with ticks
    # at 102 and 104, miss rates that cannot be
    records = [record(f, v, 100.0) for f in FACTORS for v in ("native", "md")]
    teacher = {"miss_rate": {"day": 100.0, "night": 100.0, "all": 100.0}}
    ax = demo.factor_plot(records, "detection", FACTORS, teacher).axes[0]
    lo, hi = ax.get_ylim()
    assert lo > 98.9 and hi < 100.1
    assert max(t for t in ax.get_yticks() if lo <= t <= hi) == pytest.approx(100.0)


def write_log(path: Path, key: str, losses: list[float]) -> None:
    path.write_text(
        "".join(json.dumps({"iteration": i, key: v}) + "\n" for i, v in enumerate(losses))
    )


def test_loss_plot_lists_students_in_the_tables_order_with_its_words(tmp_path: Path) -> None:
    write_log(tmp_path / "teacher.metrics.jsonl", "loss/total", [20.0, 9.0, 8.0])
    records = []
    for f in ("16", "none", "4", "64", "1"):  # as results.jsonl may list them
        for v in ("md", "native"):
            ckpt = tmp_path / f"detection_{v}_tf{f}_s0.pt"
            write_log(
                ckpt.with_suffix(".metrics.jsonl"),
                "loss/task" if v == "md" else "loss/total",
                [16.0, 6.0, 5.5],
            )
            records.append({**record(f, v, 100.0), "checkpoint": str(ckpt)})
    fig = demo.loss_plot(records, str(tmp_path / "teacher.pt"))
    ax_t, ax_s = fig.axes
    assert [t.get_text() for t in ax_s.get_legend().get_texts()] == [
        "native 1x",
        "MD 1x",
        "native 4x",
        "MD 4x",
        "native 16x",
        "MD 16x",
        "native 64x",
        "MD 64x",
        "native visible-only",
        "MD visible-only",
    ]
    assert ax_t.get_yscale() == ax_s.get_yscale() == "log"  # 20 -> 8 does not flatten the tail
    lines = ax_s.get_lines()  # a factor's native (dashed) and MD (solid) share a colour
    assert [ln.get_color() for ln in lines[::2]] == [ln.get_color() for ln in lines[1::2]]
    assert len({ln.get_color() for ln in lines}) == 5
    assert [ln.get_linestyle() for ln in lines[:2]] == ["--", "-"]


def test_loss_plot_tells_seeds_apart(tmp_path: Path) -> None:
    records = []
    for seed in (1, 0):
        ckpt = tmp_path / f"detection_md_tf16_s{seed}.pt"
        write_log(ckpt.with_suffix(".metrics.jsonl"), "loss/task", [3.0, 2.0])
        records.append({**record("16", "md", 100.0), "seed": seed, "checkpoint": str(ckpt)})
    fig = demo.loss_plot(records, str(tmp_path / "no-teacher.pt"))
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "MD 16x s0",
        "MD 16x s1",
    ]


def fig4_rows(thermal: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [
        {
            "group": g,
            "visible": rng.random((8, 12, 3)),
            "thermal": rng.random((8, 12)) if thermal else None,
            "teacher": rng.random((2, 3)),
            "student": rng.random((2, 3)),
            "weights": 1.0 + 3.0 * rng.random((2, 3)),
        }
        for g in ("day", "night")
    ]


def test_fig4_maps_have_colour_bars_with_their_value_range() -> None:
    rows = fig4_rows()
    fig = demo.fig4_plot(rows, "c3", "16")
    grid = fig.axes[:10]  # the 2 x 5 panels come first, then the colour bars
    assert len(fig.axes) == 10 + 2 * 4  # every map but the visible image has one
    for r, row in enumerate(rows):
        images = [ax.get_images()[0] for ax in grid[5 * r : 5 * r + 5]]
        assert images[0].colorbar is None  # an RGB image has no scale
        for key, image in zip(
            ("thermal", "teacher", "student", "weights"), images[1:], strict=True
        ):
            assert image.colorbar is not None, key
            lo, hi = image.colorbar.mappable.get_clim()
            if key in ("teacher", "student"):
                assert (lo, hi) == (0.0, 1.0)  # one fixed scale for both masks
            else:
                assert (lo, hi) == pytest.approx((row[key].min(), row[key].max()))
    assert [grid[c].get_title() for c in range(5)] == [
        "visible",
        "thermal (16x)",
        "teacher mask c3",
        "student mask c3",
        "F-MSE weights c3",
    ]


def test_fig4_of_a_visible_only_student_leaves_the_thermal_panel_empty() -> None:
    fig = demo.fig4_plot(fig4_rows(thermal=False), "c3", "none")
    assert fig.axes[1].get_images() == [] and len(fig.axes) == 10 + 2 * 3
