import math

import pytest

from md import tables


def rec(task, factor, variant, seed, allv, day=None, night=None):
    metric = "miss_rate" if task == "detection" else "mean_accuracy"
    return {
        "key": f"{task}/{variant}/tf{factor}/s{seed}",
        "task": task,
        "factor": factor,
        "variant": variant,
        "seed": seed,
        metric: {
            "all": allv,
            "day": day if day is not None else allv,
            "night": night if night is not None else allv,
        },
    }


def test_mean_and_standard_error_by_hand():
    m, se = tables.mean_se([10.0, 12.0, 14.0])
    assert m == 12.0 and se == pytest.approx(2.0 / math.sqrt(3))  # std 2, n 3
    assert tables.mean_se([5.0]) == (5.0, 0.0)


def test_tables_aggregate_seeds_and_skip_failed_runs():
    records = [rec("detection", "16", "native", s, v) for s, v in enumerate([10.0, 12.0, 14.0])]
    records += [
        rec("detection", "16", "md", 0, 8.0),
        {
            "key": "x",
            "task": "detection",
            "factor": "16",
            "variant": "md",
            "seed": 1,
            "error": ["boom"],
        },
    ]
    out = tables.thermal_table(records, "detection", ["16"])
    assert f"| 16x downsample |  | 12.00±{2 / math.sqrt(3):.2f}" in out
    assert "| 16x downsample | ✓ | 8.00 | 8.00 | 8.00 | 1 |" in out
    assert "Miss rate" in out


def test_grids_cover_every_cell_once():
    grid = tables.md_grid(["detection"], tables.FACTORS, [0, 1])
    assert len(grid) == 5 * 2 * 2 and len({r.key for r in grid}) == len(grid)
    assert all(r.no_distill == (r.variant == "native") for r in grid)
    abl = tables.ablation_grid(["segmentation"], [0])
    assert {r.variant for r in abl} == set(tables.ABLATIONS) and all(r.factor == "16" for r in abl)
