"""`md data synth --appearance`: an under-represented pedestrian appearance, off by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from md.data.synthetic import SynthConfig, render_sample
from md.data.synthetic.writer import appearance_of, run
from md.errors import ConfigError


def test_common_frame_is_the_default_frame() -> None:
    base = render_sample("detection", 3, "train", 1, (96, 64))
    common = render_sample("detection", 3, "train", 1, (96, 64), "common")
    assert np.array_equal(base.visible, common.visible)
    assert np.array_equal(base.thermal, common.thermal)
    assert [b.bbgt_line() for b in base.boxes] == [b.bbgt_line() for b in common.boxes]
    assert {b.appearance for b in common.boxes} <= {"common"}


def test_rare_people_are_cooler_same_boxes() -> None:
    # night frames: people stand out in thermal, the insulated coat takes most of that away
    found = 0
    for index in (1, 3, 5, 7, 9, 11):
        common = render_sample("detection", 0, "test", index, (160, 128), "common")
        rare = render_sample("detection", 0, "test", index, (160, 128), "rare")
        assert [b.bbgt_line() for b in common.boxes] == [b.bbgt_line() for b in rare.boxes]
        for b in rare.boxes:
            if b.label != "person" or b.h < 20 or b.occlusion:
                continue
            window = (slice(b.y, b.y + b.h), slice(b.x, b.x + b.w))
            t_common = common.thermal[window].astype(float).mean()
            t_rare = rare.thermal[window].astype(float).mean()
            assert t_rare < t_common
            assert b.appearance == "rare"
            found += 1
    assert found > 0


def test_share_is_exact_per_split() -> None:
    cfg = SynthConfig(n_train=40, n_test=10, appearance=(0.05, 0.5))
    train = [appearance_of(cfg, "train", i) for i in range(40)]
    test = [appearance_of(cfg, "test", i) for i in range(10)]
    assert train.count("rare") == 2 and test.count("rare") == 5


def test_written_groups_and_annotations(tmp_path: Path) -> None:
    cfg = SynthConfig(n_train=2, n_test=2, size=(64, 64), appearance=(0.0, 1.0))
    meta = run(cfg, tmp_path / "d")
    groups = json.loads((tmp_path / "d" / "groups.json").read_text())["appearance"]
    assert sorted(groups.values()) == ["common", "common", "rare", "rare"]
    ann = json.loads((tmp_path / "d" / "annotations.json").read_text())["annotations"]
    assert all(a["appearance"] == "rare" for a in ann)
    assert "--appearance 0.0:1.0" in str(meta["regenerate"])
    with pytest.raises(ConfigError, match="appearance"):
        SynthConfig(appearance=(0.5, 1.5)).check()
