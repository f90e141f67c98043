"""The model factory: every kind x task goes build -> forward -> save -> load, and the loaded
model gives the saved model's outputs exactly (same process, same ops, same weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from md.errors import MdError
from md.models import MODEL_KINDS, build_model, load_model, model_args, num_classes
from md.models.resnet import LEVELS
from md.train.checkpoint import save_checkpoint

TASKS = ("detection", "segmentation")
H, W = 64, 64
SIZE = {"width": 0.125, "head_channels": 16}

# (kind, variant, model_args options): each kind at its defaults plus the options that change
# its structure (levels, input channels, head input, head options saved in head_kwargs).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("teacher", "all-levels", {"levels": LEVELS}),
    (
        "teacher",
        "c4-mutual-weighted",
        {
            "levels": ("c4",),
            "assign": "mutual_guidance",
            "class_weights": tuple(0.5 + i for i in range(9)),
        },
    ),
    ("student", "6ch-attended", {"levels": LEVELS}),
    ("student", "6ch-transfer-c3c5", {"levels": ("c3", "c5"), "head_input": "transfer"}),
    ("student", "6ch-trunk", {"levels": LEVELS, "head_input": "trunk"}),
    ("student", "3ch-native", {"levels": (), "in_channels": 3}),
    ("decision", "default", {}),
]


def _inputs(kind: str, args: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    visible, thermal = torch.rand(2, 3, H, W, generator=gen), torch.rand(2, 1, H, W, generator=gen)
    if kind != "student":
        return (visible, thermal)
    if args["in_channels"] == 3:
        return (visible,)
    return (torch.cat([visible, thermal.expand(-1, 3, -1, -1)], 1),)


def _leaves(out: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor (or plain value, e.g. an image size) in a nested model output, by path."""
    if isinstance(out, dict):
        items: Any = out.items()
    elif isinstance(out, (list, tuple)):
        items = enumerate(out)
    else:
        return {prefix: out}
    found: dict[str, Any] = {}
    for key, value in items:
        found.update(_leaves(value, f"{prefix}/{key}"))
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


def _trained_a_little(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Weights and BatchNorm statistics away from their initial values (zero-initialised
    scales included), so that a load that kept fresh weights or buffers shows."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.train()
        model(*inputs)  # running means / variances move
    model.eval()


def test_every_kind_is_swept() -> None:
    assert {kind for kind, _, _ in CASES} == set(MODEL_KINDS)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind, variant, options", CASES, ids=[f"{k}-{v}" for k, v, _ in CASES])
def test_build_forward_save_load_gives_the_same_outputs(
    tmp_path: Path, kind: str, variant: str, options: dict[str, Any], task: str
) -> None:
    args = model_args(kind, task, **SIZE, **options)
    torch.manual_seed(0)
    model = build_model(kind, task, **args)
    assert type(model) is MODEL_KINDS[kind] and model.task == task
    inputs = _inputs(kind, args)
    _trained_a_little(model, inputs)
    with torch.no_grad():
        expected = _leaves(model(*inputs))
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(
        path, {"task": task, "model_kind": kind, "model_args": args, "weights": model.state_dict()}
    )

    loaded, ckpt = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert ckpt["model_args"] == args and ckpt["task"] == task and ckpt["model_kind"] == kind
    with torch.no_grad():
        got = _leaves(loaded(*inputs))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert _same(got[name], value), f"{kind}/{variant}/{task}: {name} differs"
    head = got["/pred/logits"] if task == "segmentation" else got["/pred/cls_logits"]
    assert head.shape[-1 if task == "detection" else 1] == num_classes(task)

    # The comparison can tell models apart: the same architecture with fresh weights differs.
    fresh = build_model(kind, task, **args).eval()
    with torch.no_grad():
        fresh_out = _leaves(fresh(*inputs))
    assert any(not _same(fresh_out[k], v) for k, v in expected.items())


def test_model_args_and_build_refuse_an_unknown_kind() -> None:
    with pytest.raises(MdError, match="model kind must be one of"):
        model_args("ensemble", "detection", **SIZE)
    with pytest.raises(MdError, match="model kind must be one of"):
        build_model("ensemble", "detection")


def test_num_classes_by_task() -> None:
    assert num_classes("segmentation") == 9  # MFNet: unlabeled + 8 classes
    assert num_classes("detection") == 1  # pedestrian
