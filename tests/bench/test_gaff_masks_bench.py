"""bench/gaff_masks.py: mask statistics, loss shares and figures against hand-computed cases."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO

MOD = runpy.run_path(str(REPO / "bench" / "gaff_masks.py"))


class FakeTeacher:
    """One level c3 (2x2) with fixed masks, and a fixed ground-truth foreground."""

    mask = torch.tensor([[0.9, 0.001], [0.2, 0.6]])
    fg = torch.tensor([[1.0, 0.0], [0.0, 0.5]])

    def __call__(self, visible: torch.Tensor, thermal: torch.Tensor) -> dict[str, Any]:
        b = visible.shape[0]
        m = self.mask.expand(b, 1, 2, 2)
        inter = torch.stack([torch.full((b, 2, 2), 0.25), torch.full((b, 2, 2), 0.75)], 1)
        gaff = {"intra_vis": torch.full((b, 1, 2, 2), 0.4), "intra_th": m, "inter": inter}
        return {"gaff": {"c3": {**gaff, "teacher_mask": m}}}

    def foreground(self, batch: dict[str, Any], size: tuple[int, ...]) -> torch.Tensor:
        assert tuple(size) == (2, 2)
        return self.fg.expand(batch["visible"].shape[0], 1, 2, 2)


def _batch(b: int = 3) -> dict[str, Any]:
    return {"visible": torch.rand(b, 3, 16, 16), "thermal": torch.rand(b, 1, 16, 16)}


def test_mask_statistics_by_hand() -> None:
    s = MOD["mask_stats"](FakeTeacher(), [_batch(3), _batch(1)])["c3"]
    assert s["intra_visible"] == pytest.approx(0.4)
    assert s["inter_visible"] == pytest.approx(0.25)
    assert s["teacher_mask"] == pytest.approx((0.9 + 0.001 + 0.2 + 0.6) / 4)
    assert s["teacher_mask_above_half"] == pytest.approx(0.5)  # 0.9 and 0.6
    assert s["teacher_mask_stored_zero"] == pytest.approx(0.25)  # 0.001 < 0.5/255
    assert s["teacher_mask_on_foreground"] == pytest.approx((0.9 + 0.6) / 2)  # fg >= 0.5
    assert s["teacher_mask_on_background"] == pytest.approx((0.001 + 0.2) / 2)  # fg == 0
    assert s["foreground"] == pytest.approx(1.5 / 4) and s["foreground_cells"] == 0.5
    dice = 2 * (0.9 * 1.0 + 0.6 * 0.5) / (1.701 + 1.5)
    assert s["dice_teacher_mask_vs_foreground"] == pytest.approx(dice)


def test_loss_share_from_the_training_log(tmp_path: Path) -> None:
    recs = [{"iteration": i, "loss/seg": 1.0, "loss/gaff_intra": g, "loss/gaff_inter": 0.5,
             "loss/total": 1.5 + g} for i, g in ((0, 2.0), (10, 1.0), (20, 0.5))]  # fmt: skip
    recs.append({"kind": "loader", "iteration": 21})
    (tmp_path / "t.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    share = MOD["_log_share"](tmp_path / "t.pt", window=2)
    assert share["first"]["gaff_share"] == pytest.approx(2.5 / 3.5)
    assert share["last"]["iteration"] == 20
    assert share["last"]["gaff_intra"] == pytest.approx(0.75)  # mean of the last two
    assert share["last"]["gaff_share"] == pytest.approx((0.75 + 0.5) / (1.5 + 0.75))
    assert MOD["_log_share"](tmp_path / "none.pt") is None


def test_figure_tiles_one_row_per_sample() -> None:
    labels = torch.zeros(16, 20, dtype=torch.long)
    labels[4:8, 4:8] = 2
    item = {"visible": torch.rand(3, 16, 20), "thermal": torch.rand(1, 16, 20), "labels": labels}
    img = MOD["figure"](FakeTeacher(), item)
    assert img.size == (6 * (20 + 2) - 2, 16)  # visible, thermal, labels + 3 masks of c3
    last = img.crop((5 * 22, 0, 5 * 22 + 20, 16)).convert("L")  # the teacher mask, upsampled
    assert last.getpixel((0, 0)) == round(0.9 * 255) and last.getpixel((19, 15)) == round(0.6 * 255)
