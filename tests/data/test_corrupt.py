"""Seeded corruptions: deterministic per sample id, independent of the batch, identity at
severity 0, worse with severity, shape / dtype / range kept, other modality untouched."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from md.data.corrupt import CORRUPTIONS, MODALITY, get_corruption
from md.errors import ConfigError
from md.eval.model_eval import evaluate_model
from tests.conftest import one_torch_thread, run_cli
from tests.deploy.conftest import make_checkpoint

NAMES = sorted(CORRUPTIONS)
H, W = 40, 48


def images(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Smooth images with texture, values in [0.1, 0.9] (room to move both ways)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 4, H // 4, W // 4, generator=g)
    up = torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear", align_corners=False)
    x = 0.1 + 0.8 * (0.7 * up + 0.3 * torch.rand(n, 4, H, W, generator=g))
    return x[:, :3].contiguous(), x[:, 3:].contiguous(), [f"set06/V000/I{i:05d}" for i in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name: str) -> None:
    v, t, ids = images()
    cv, ct = get_corruption(f"{name}:0")(v, t, ids)
    assert torch.equal(cv, v) and torch.equal(ct, t)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shape_dtype_range_and_other_modality(name: str, severity: int) -> None:
    v, t, ids = images()
    cv, ct = get_corruption(f"{name}:{severity}")(v, t, ids)
    assert cv.shape == v.shape and ct.shape == t.shape
    assert cv.dtype == v.dtype and ct.dtype == t.dtype
    assert float(cv.min()) >= 0 and float(cv.max()) <= 1
    assert float(ct.min()) >= 0 and float(ct.max()) <= 1
    changed = {"visible": not torch.equal(cv, v), "thermal": not torch.equal(ct, t)}
    expected = MODALITY[name]
    assert changed["visible"] == (expected in ("visible", "both"))
    assert changed["thermal"] == (expected in ("thermal", "both"))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_batch_independent(name: str) -> None:
    v, t, ids = images()
    c = get_corruption(f"{name}:4", seed=7)
    a = c(v, t, ids)
    b = get_corruption(f"{name}:4", seed=7)(v.clone(), t.clone(), list(ids))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # sample 2 alone, and in a reversed batch: the same output as in the first batch
    alone = c(v[2:3], t[2:3], ids[2:3])
    rev = c(v.flip(0), t.flip(0), ids[::-1])
    for k in (0, 1):
        assert torch.equal(alone[k][0], a[k][2])
        assert torch.equal(rev[k].flip(0), a[k])


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("blur", "fog", "jpeg")])
def test_seed_and_id_matter_for_random_corruptions(name: str) -> None:
    v, t, ids = images()
    a = get_corruption(f"{name}:3", seed=0)(v, t, ids)
    b = get_corruption(f"{name}:3", seed=1)(v, t, ids)
    same_pixels_other_id = get_corruption(f"{name}:3", seed=0)(v[:1], t[:1], ["other/id"])
    k = 1 if MODALITY[name] == "thermal" else 0
    assert not torch.equal(a[k], b[k])
    assert not torch.equal(same_pixels_other_id[k][0], a[k][0])


def error(
    clean: tuple[torch.Tensor, torch.Tensor], out: tuple[torch.Tensor, torch.Tensor]
) -> float:
    return float(
        sum((o.double() - c.double()).abs().mean() for o, c in zip(out, clean, strict=True))
    )


@pytest.mark.parametrize("name", NAMES)
def test_worse_with_severity(name: str) -> None:
    """Mean absolute change from the clean images grows strictly with the severity, for
    each sample on its own (JPEG: the 8-bit round trip error, a measured, not a built-in
    property)."""
    v, t, ids = images()
    for i in range(len(ids)):
        clean = (v[i : i + 1], t[i : i + 1])
        errs = [
            error(clean, get_corruption(f"{name}:{s}")(*clean, ids[i : i + 1])) for s in range(6)
        ]
        assert errs[0] == 0
        assert all(a < b for a, b in itertools.pairwise(errs)), (name, i, errs)


def test_dead_pixels_are_nested_across_severities() -> None:
    v, t, ids = images()
    dead = [get_corruption(f"thermal_dead:{s}")(v, t, ids)[1] == 0 for s in range(1, 6)]
    for lower, higher in itertools.pairwise(dead):
        assert bool((lower <= higher).all())  # what is dead stays dead
    share = dead[-1].double().mean().item()
    # 20 % pixels and 12 % columns, independent: 1 - 0.8 * 0.88 = 29.6 % expected
    assert abs(share - 0.296) < 0.05


def test_blur_keeps_a_constant_image_and_smooths_an_edge() -> None:
    v = torch.full((1, 3, H, W), 0.5)
    t = torch.zeros(1, 1, H, W)
    out = get_corruption("blur:5")(v, t, ["a"])[0]
    torch.testing.assert_close(out, v, rtol=0, atol=1e-6)  # normalised kernel, reflect pad
    step = torch.zeros(1, 3, H, W)
    step[..., W // 2 :] = 1
    blurred = get_corruption("blur:2")(step, t, ["a"])[0]
    row = blurred[0, 0, H // 2]
    assert 0 < row[W // 2 - 1] < 0.5 < row[W // 2] < 1  # sigma 1 px: the edge spreads
    assert torch.all(row[1:] >= row[:-1])  # and stays monotone


def test_bad_specs() -> None:
    for spec, fragment in [("nope", "unknown corruption"), ("fog:6", "0..5"), ("fog:x", "0..5")]:
        with pytest.raises(ConfigError, match=fragment):
            get_corruption(spec)
    assert get_corruption("fog").severity == 3


def test_evaluate_model_corrupt(tmp_path: Path, synth_det: Path) -> None:
    """The corruption reaches the model: severity 0 scores exactly like no corruption, the
    detections under a strong one differ, and the CLI option parses into it."""
    ckpt = make_checkpoint(tmp_path / "s.pt", "md16", "detection")
    with one_torch_thread():
        plain = evaluate_model(ckpt, synth_det, device="cpu", save_results=tmp_path / "a.txt")
        zero = evaluate_model(
            ckpt,
            synth_det,
            device="cpu",
            save_results=tmp_path / "b.txt",
            corrupt=get_corruption("thermal_noise:0"),
        )
        run_cli(
            "evaluate",
            "model",
            str(ckpt),
            "--data",
            str(synth_det),
            "--corrupt",
            "thermal_dead:5",
            "--save-results",
            str(tmp_path / "c.txt"),
            "--device",
            "cpu",
        )
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert zero["miss_rate"] == plain["miss_rate"] and zero["corruption"] == "thermal_noise:0"
    assert plain["corruption"] is None
    assert (tmp_path / "c.txt").read_bytes() != (tmp_path / "a.txt").read_bytes()
    out = run_cli(
        "evaluate", "model", str(ckpt), "--data", str(synth_det), "--corrupt", "smoke", expect=2
    )
    assert "unknown corruption 'smoke'" in out
