"""Which backbone levels each task head reads (issue 18, experiment 4).

Invariants, not recorded outputs: a head's output must change when a level it names in
``in_levels`` changes and stay bitwise the same when any other level changes; the task loss
of a segmentation student or teacher must send no gradient into the distillation modules of
a level the head does not read (there, distillation acts only through the trunk).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from md.models import OneStreamStudent, TwoStreamTeacher
from md.models.heads import build_head

CHANNELS = {"c3": 8, "c4": 12, "c5": 16}
STRIDES = {"c3": 8, "c4": 16, "c5": 32}
SIZE = (64, 96)


def _feats(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, w = SIZE
    return {
        lv: torch.randn(2, c, h // STRIDES[lv], w // STRIDES[lv], generator=gen)
        for lv, c in CHANNELS.items()
    }


def _outputs(task: str, out: dict[str, Any]) -> list[torch.Tensor]:
    if task == "segmentation":
        return [out["logits"]]
    return [out["cls_logits"], out["box_deltas"]]


@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        ("segmentation", {"use_c3": True}, ("c3", "c5")),
        ("segmentation", {"use_c3": False}, ("c5",)),
        ("detection", {}, ("c3", "c4", "c5")),
    ],
)
def test_head_output_depends_exactly_on_in_levels(
    task: str, kwargs: dict[str, Any], expected: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    head = build_head(task, CHANNELS, **kwargs).eval()
    assert head.in_levels == expected
    feats = _feats()
    with torch.no_grad():
        base = _outputs(task, head(feats, SIZE))
        for lv in CHANNELS:
            changed = dict(feats, **{lv: feats[lv] + 1.0 + torch.rand_like(feats[lv])})
            out = _outputs(task, head(changed, SIZE))
            same = all(torch.equal(a, b) for a, b in zip(base, out, strict=True))
            assert same == (lv not in expected), (lv, expected)


def _seg_batch() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    labels = torch.zeros(2, *SIZE, dtype=torch.long)
    labels[:, 16:40, 20:50] = 2
    labels[:, 48:, :] = 4
    return {
        "visible": torch.rand(2, 3, *SIZE, generator=gen),
        "thermal": torch.rand(2, 1, *SIZE, generator=gen),
        "labels": labels,
    }


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("head_input", ["attended", "transfer"])
def test_segmentation_task_loss_never_reaches_the_c4_transfer(head_input: str) -> None:
    torch.manual_seed(0)
    student = OneStreamStudent("segmentation", width=0.125, head_input=head_input)
    assert student.head.in_levels == ("c3", "c5")
    assert student.strides == STRIDES  # the strides the head's decoder and PPM see
    batch = _seg_batch()
    x = torch.cat([batch["visible"], batch["thermal"].expand(-1, 3, -1, -1)], 1)
    student.loss(student(x), batch)["total"].backward()
    assert _grad_norm(student.semantic_transfer["c3"]) > 0
    assert _grad_norm(student.semantic_transfer["c5"]) > 0
    # the mask is on the head path only when the head reads s * (1 + m)
    assert (_grad_norm(student.attention_transfer["c3"]) > 0) == (head_input == "attended")
    assert _grad_norm(student.semantic_transfer["c4"]) == 0
    assert _grad_norm(student.attention_transfer["c4"]) == 0
    assert _grad_norm(student.trunk.layer3) > 0  # c4 still matters as the path to c5


def test_segmentation_teacher_c4_fusion_is_shaped_only_by_the_gaff_losses() -> None:
    torch.manual_seed(0)
    teacher = TwoStreamTeacher("segmentation", width=0.125)
    batch = _seg_batch()
    out = teacher(batch["visible"], batch["thermal"])
    teacher.loss(out, batch)["seg"].backward()  # the head's loss alone
    assert _grad_norm(teacher.gaff["c3"]) > 0 and _grad_norm(teacher.gaff["c5"]) > 0
    assert _grad_norm(teacher.gaff["c4"]) == 0
