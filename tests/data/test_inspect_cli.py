"""`md data inspect` on the real shared data sets and on generated ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from md.cli import main
from md.data.synthetic import SynthConfig, run


def inspect(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["data", "inspect", *args])
    return result.exit_code, result.output


def inspect_json(*args: str) -> dict[str, Any]:
    code, output = inspect(*args, "--json")
    assert code == 0, output
    summary: dict[str, Any] = json.loads(output)
    return summary


def test_kaist_demo(kaist_demo: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    summary = inspect_json(str(kaist_demo), "--sheet", str(sheet))
    assert summary["layout"] == "kaist" and summary["task"] == "detection"
    assert summary["samples"] == 9 and summary["boxes"] == 59
    assert (summary["day"], summary["night"]) == (4, 5)  # set06-08 day, set09-11 night
    assert sum(summary["boxes_by_group"].values()) == 59
    assert 0 < summary["boxes_reasonable"] < 59
    assert summary["problems"] == []
    with Image.open(sheet) as im:
        assert im.mode == "RGB"
        assert im.width == 3 * 240 and 6 * 190 < im.height < 6 * 220  # 3 day + 3 night rows


def test_kaist_demo_list_and_text(kaist_demo: Path) -> None:
    code, output = inspect(str(kaist_demo), "--list", str(kaist_demo / "demo.txt"))
    assert code == 0, output
    assert "kaist layout" in output and "9 samples: 4 day, 5 night" in output
    assert "boxes: 59" in output and "no problems found" in output


def test_mfnet_mini(mfnet_mini: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    summary = inspect_json(str(mfnet_mini), "--sheet", str(sheet), "--per-group", "2")
    assert summary["layout"] == "mfnet" and summary["samples"] == 220
    assert (summary["day"], summary["night"]) == (110, 110)
    shares = summary["class_shares"]
    assert list(shares) == [
        "unlabeled",
        "car",
        "person",
        "bike",
        "curve",
        "car_stop",
        "guardrail",
        "color_cone",
        "bump",
    ]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    assert shares["unlabeled"] > 0.5 and all(v > 0 for v in shares.values())
    with Image.open(sheet) as im:
        assert im.width == 720 and 4 * 180 < im.height < 4 * 180 + 120


def test_synthetic_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    run(SynthConfig(task="detection", n_train=4, n_test=2, seed=1), root)
    lines = [
        line
        for p in (root / "annotations").rglob("*.txt")
        for line in p.read_text().splitlines()[1:]
    ]
    summary = inspect_json(str(root))
    assert summary["layout"] == "kaist" and summary["samples"] == 6
    assert (summary["day"], summary["night"]) == (3, 3)
    assert summary["boxes"] == len(lines)
    assert inspect_json(str(root), "--split", "test")["samples"] == 2

    seg = tmp_path / "seg"
    run(SynthConfig(task="segmentation", n_train=2, n_test=0), seg)
    shares = inspect_json(str(seg))["class_shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)


def test_folder_in_neither_layout_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("no images here")
    code, output = inspect(str(tmp_path / "stuff"))
    assert code == 2
    assert output.startswith("md: error: ") and output.count("\n") == 1
    assert "stuff" in output


def test_broken_sample_is_reported_with_exit_1(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    run(SynthConfig(task="segmentation", n_train=2, n_test=0), root)
    (root / "images" / "00002N.png").write_bytes(b"not a png")
    sheet = tmp_path / "sheet.png"
    code, output = inspect(str(root), "--sheet", str(sheet))
    assert code == 1
    assert "1 problem(s)" in output and "00002N.png" in output
    with Image.open(sheet) as im:  # the sheet leaves the broken sample out
        assert im.height < 2 * 180
