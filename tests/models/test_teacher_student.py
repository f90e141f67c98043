"""Teacher, student and decision-level models: output names/shapes, losses, backward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from md.errors import MdError
from md.models import (
    DecisionLevel,
    OneStreamStudent,
    TwoStreamTeacher,
    build_model,
)
from md.models.resnet import ResNet18

WIDTH = 0.125  # c3/c4/c5 = 16/32/64 channels
H, W = 64, 64
LEVEL_SHAPES = {"c3": (16, 8, 8), "c4": (32, 4, 4), "c5": (64, 2, 2)}
TASKS = ("detection", "segmentation")


def _batch(task: str, b: int = 2) -> dict[str, Any]:
    """A collated batch like the datasets produce, at 64x64."""
    gen = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {
        "visible": torch.rand(b, 3, H, W, generator=gen),
        "thermal": torch.rand(b, 1, H, W, generator=gen),
    }
    if task == "detection":
        batch["boxes"] = [
            torch.tensor([[10.0, 8.0, 30.0, 50.0], [40.0, 20.0, 52.0, 44.0]]),
            torch.zeros(0, 4),
        ][:b]
        batch["box_ignore"] = [torch.tensor([False, True]), torch.zeros(0, dtype=torch.bool)][:b]
    else:
        labels = torch.zeros(b, H, W, dtype=torch.long)
        labels[:, 20:40, 10:30] = 2
        labels[:, 50:, :] = 4
        batch["labels"] = labels
    return batch


def _student_input(batch: dict[str, Any], channels: int) -> torch.Tensor:
    if channels == 3:
        return batch["visible"]
    return torch.cat([batch["visible"], batch["thermal"].expand(-1, 3, -1, -1)], 1)


def _check_pred(task: str, pred: dict[str, Any], b: int = 2) -> None:
    if task == "detection":
        a = pred["anchors"].shape[0]
        assert pred["cls_logits"].shape == (b, a, 1)
        assert pred["box_deltas"].shape == (b, a, 4)
        assert pred["anchors"].shape == (a, 4)
    else:
        assert pred["logits"].shape == (b, 9, H, W)


def _check_loss(parts: dict[str, torch.Tensor], expected: set[str]) -> None:
    assert set(parts) == expected
    for name, value in parts.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    parts["total"].backward()


def _head_parts(task: str) -> set[str]:
    return {"cls", "box"} if task == "detection" else {"seg"}


@pytest.mark.parametrize("task", TASKS)
def test_teacher_outputs_and_loss(task: str) -> None:
    torch.manual_seed(0)
    teacher = TwoStreamTeacher(task, width=WIDTH)
    batch = _batch(task)
    out = teacher(batch["visible"], batch["thermal"])
    assert set(out) == {"features", "masks", "gaff", "pred"}
    for level, (c, h, w) in LEVEL_SHAPES.items():
        assert out["features"][level].shape == (2, c, h, w)
        assert out["masks"][level].shape == (2, 1, h, w)
        assert set(out["gaff"][level]) == {
            "fused",
            "intra_vis",
            "intra_th",
            "inter",
            "teacher_mask",
        }
    _check_pred(task, out["pred"])
    assert teacher.out_channels == {lv: c for lv, (c, _, _) in LEVEL_SHAPES.items()}
    assert teacher.strides == {"c3": 8, "c4": 16, "c5": 32}
    _check_loss(teacher.loss(out, batch), _head_parts(task) | {"gaff_intra", "gaff_inter", "total"})
    assert all(p.grad is not None for p in teacher.gaff.parameters())
    with torch.no_grad():  # the cache path: no head, same targets
        feats = teacher.eval().forward_features(batch["visible"], batch["thermal"])
    assert set(feats) == {"features", "masks", "gaff", "pyramid"}
    assert set(feats["pyramid"]) == {"c3", "c4", "c5"}


def test_teacher_partial_levels_and_loss_weights() -> None:
    teacher = TwoStreamTeacher(
        "segmentation", width=WIDTH, levels=("c5",), loss_weights={"gaff_inter": 0.0, "seg": 2.0}
    )
    batch = _batch("segmentation")
    out = teacher(batch["visible"], batch["thermal"])
    assert set(out["features"]) == set(out["masks"]) == {"c5"}
    assert list(teacher.gaff) == ["c5"]
    parts = teacher.loss(out, batch)
    torch.testing.assert_close(parts["total"], 2 * parts["seg"] + parts["gaff_intra"])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("channels", [6, 3])
def test_student_matches_teacher_shapes_and_trains(task: str, channels: int) -> None:
    torch.manual_seed(0)
    student = OneStreamStudent(task, in_channels=channels, width=WIDTH)
    batch = _batch(task)
    out = student(_student_input(batch, channels))
    assert set(out) == {"features", "masks", "pred"}
    for level, (c, h, w) in LEVEL_SHAPES.items():
        assert out["features"][level].shape == (2, c, h, w)  # = teacher fused at L
        mask = out["masks"][level]
        assert mask.shape == (2, 1, h, w) and mask.min() >= 0 and mask.max() <= 1
    _check_pred(task, out["pred"])
    _check_loss(student.loss(out, batch), _head_parts(task) | {"total"})
    assert student.trunk.conv1.weight.grad is not None


@pytest.mark.parametrize("head_input", ["attended", "transfer", "trunk"])
def test_student_head_input_options(head_input: str) -> None:
    student = OneStreamStudent("segmentation", width=WIDTH, levels=("c4",), head_input=head_input)
    out = student(_student_input(_batch("segmentation"), 6))
    assert set(out["features"]) == {"c4"}
    # distillation outputs are differentiable in every mode (the trainer adds their losses)
    (out["features"]["c4"].mean() + out["masks"]["c4"].mean()).backward()
    assert all(p.grad is not None for p in student.attention_transfer.parameters())


def test_trunk_head_student_skips_side_modules_at_inference() -> None:
    # head_input=trunk: the deployed student is the image-level network (paper runtime);
    # the prediction is the same with or without the side outputs
    student = OneStreamStudent("segmentation", width=WIDTH, head_input="trunk").eval()
    x = _student_input(_batch("segmentation"), 6)
    with torch.no_grad():
        fast, full = student(x), student(x, side_outputs=True)
    assert fast["features"] == {} and fast["masks"] == {}
    assert set(full["features"]) == set(full["masks"]) == {"c3", "c4", "c5"}
    # The same head on the same trunk features, in one process: bit for bit.
    torch.testing.assert_close(fast["pred"], full["pred"], rtol=0, atol=0)
    assert set(student.train()(x)["masks"]) == {"c3", "c4", "c5"}  # training needs them
    attended = OneStreamStudent("segmentation", width=WIDTH).eval()
    with torch.no_grad():
        assert set(attended(x)["masks"]) == {"c3", "c4", "c5"}  # on its head path


def test_semantic_transfer_starts_as_identity() -> None:
    student = OneStreamStudent("segmentation", width=WIDTH).eval()
    x = _student_input(_batch("segmentation"), 6)
    with torch.no_grad():
        trunk = student.trunk(student.norm(x))
        out = student(x)
    torch.testing.assert_close(out["features"]["c3"], trunk["c3"])


@pytest.mark.parametrize("task", TASKS)
def test_decision_level(task: str) -> None:
    model = DecisionLevel(task, width=WIDTH)
    batch = _batch(task)
    out = model(batch["visible"], batch["thermal"])
    assert set(out) == {"pred", "pred_visible", "pred_thermal"}
    for key in out:
        _check_pred(task, out[key])
    expected = {f"{m}_{p}" for m in ("visible", "thermal") for p in _head_parts(task)}
    _check_loss(model.loss(out, batch), expected | {"total"})


def test_build_model_factory_and_errors() -> None:
    assert isinstance(build_model("teacher", "detection", width=WIDTH), TwoStreamTeacher)
    assert isinstance(
        build_model("student", "segmentation", width=WIDTH, in_channels=3), OneStreamStudent
    )
    assert isinstance(build_model("decision", "segmentation", width=WIDTH), DecisionLevel)
    with pytest.raises(MdError, match="kind"):
        build_model("ensemble", "detection")
    with pytest.raises(MdError, match="task"):
        build_model("student", "classification", width=WIDTH)
    with pytest.raises(MdError, match="levels"):
        TwoStreamTeacher("detection", width=WIDTH, levels=("c2",))
    with pytest.raises(MdError, match="head_input"):
        OneStreamStudent("detection", width=WIDTH, head_input="fused")


def test_input_errors_are_clear() -> None:
    teacher = TwoStreamTeacher("segmentation", width=WIDTH)
    with pytest.raises(MdError, match=r"visible.*thermal"):
        teacher(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 32, 32))
    student = OneStreamStudent("segmentation", width=WIDTH, in_channels=6)
    with pytest.raises(MdError, match="6"):
        student(torch.rand(1, 3, 64, 64))
    with pytest.raises(MdError, match="labels"):
        student.loss(student(torch.rand(1, 6, 64, 64)), {"boxes": []})


def test_pretrained_file_reaches_every_trunk(tmp_path: Path) -> None:
    source = ResNet18(3)
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    w = source.conv1.weight.detach()

    teacher = TwoStreamTeacher("segmentation", pretrained=str(path))
    assert torch.equal(teacher.visible.conv1.weight, w)
    assert torch.equal(teacher.thermal.conv1.weight, w)
    student = OneStreamStudent("segmentation", in_channels=6, pretrained=path)
    assert torch.equal(student.trunk.conv1.weight, torch.cat([w, w], 1) / 2)
    with pytest.raises(MdError, match=r"resnet18\.pth.*width"):
        OneStreamStudent("segmentation", width=WIDTH, pretrained=path)
