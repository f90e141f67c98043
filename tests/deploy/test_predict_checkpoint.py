"""`CheckpointPredictor` and `open_predictor`: camera frames in, the outputs of
`md evaluate model` out (same model inputs, bitwise, when thermal comes at full size)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from md.data import open_dataset
from md.data.collate import collate
from md.data.transforms import reduce_thermal
from md.deploy.checkpoint import CheckpointPredictor, low_thermal_size
from md.deploy.loader import open_predictor
from md.errors import MdError
from md.eval.model_eval import default_thermal_factor, predict_batches
from md.models import load_model
from tests.conftest import one_torch_thread
from tests.deploy.conftest import KINDS


def camera_frames(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split's files read as 8-bit arrays with PIL (not through md.data)."""
    ds = open_dataset(data, split="test")
    vis, th = [], []
    for s in ds.samples:
        if ds.layout == "mfnet":
            a = np.asarray(Image.open(s.visible_path))
            vis.append(a[..., :3].transpose(2, 0, 1))
            th.append(a[..., 3][None])
        else:
            vis.append(np.asarray(Image.open(s.visible_path).convert("RGB")).transpose(2, 0, 1))
            th.append(np.asarray(Image.open(s.thermal_path).convert("L"))[None])
    return np.stack(vis), np.stack(th)


def eval_outputs(path: Path, data: Path) -> list:
    model, ckpt = load_model(path)
    loader = DataLoader(open_dataset(data, split="test"), batch_size=8, collate_fn=collate)
    tf = default_thermal_factor(ckpt)
    stream = predict_batches(model, ckpt["model_kind"], loader, tf, torch.device("cpu"))
    return [p for _, preds in stream for p in preds]


@pytest.mark.parametrize("name", sorted(KINDS))
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_equals_evaluate_model(
    task: str, name: str, checkpoints: dict, synth_det: Path, synth_seg: Path
) -> None:
    data = synth_det if task == "detection" else synth_seg
    path = checkpoints[(task, name)]
    visible, thermal = camera_frames(data)
    with one_torch_thread():
        expected = eval_outputs(path, data)
        got = CheckpointPredictor(path).predict(visible, thermal)
    if task == "segmentation":
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8
        assert got.shape == (len(visible), *visible.shape[-2:])
        np.testing.assert_array_equal(got, np.stack([e.numpy() for e in expected]))
        assert len(np.unique(got)) > 1  # not a constant map: the comparison means something
    else:
        assert len(got) == len(expected) == len(visible)
        assert sum(len(g["scores"]) for g in got) > 0
        for g, e in zip(got, expected, strict=True):
            assert g["boxes"].dtype == np.float32 and g["scores"].dtype == np.float32
            np.testing.assert_array_equal(g["boxes"], e["boxes"].numpy())
            np.testing.assert_array_equal(g["scores"], e["scores"].numpy())


@pytest.mark.parametrize("name", ["md16", "trunk4", "native64"])
def test_low_resolution_thermal_is_within_rounding(
    name: str, checkpoints: dict, synth_det: Path
) -> None:
    """A camera frame at the low resolution, 8-bit, up-sampled inside: bilinear weights are
    a convex combination, so rounding the low frame to 8 bits moves each up-sampled pixel
    by at most half a grey level (plus float32 rounding of the two interpolations)."""
    pred = CheckpointPredictor(checkpoints[("detection", name)])
    _, thermal = camera_frames(synth_det)
    full = torch.from_numpy(thermal.astype(np.float32)) / 255.0
    tf = pred.info.thermal_factor
    low_size = low_thermal_size(tuple(thermal.shape[-2:]), tf)
    low = torch.nn.functional.interpolate(full, size=low_size, mode="bilinear", align_corners=False)
    low8 = (low * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert low8.shape[-2:] == low_size and low_size != thermal.shape[-2:]
    via_low = pred.model_thermal(low8, tuple(thermal.shape[-2:]))
    via_full = pred.model_thermal(thermal, tuple(thermal.shape[-2:]))
    torch.testing.assert_close(via_full, reduce_thermal(full, tf), rtol=0, atol=0)
    diff = (via_low - via_full).abs().max().item()
    assert diff <= 0.5 / 255 + 4 * torch.finfo(torch.float32).eps
    assert diff > 0  # the rounding does show: the two paths are really different


def test_visible_only_ignores_thermal(checkpoints: dict, synth_det: Path) -> None:
    pred = CheckpointPredictor(checkpoints[("detection", "visible")])
    assert pred.info.thermal_factor == 0 and not pred.info.uses_thermal
    visible, thermal = camera_frames(synth_det)
    with one_torch_thread():
        a, b = pred.predict(visible, None), pred.predict(visible, 255 - thermal)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["boxes"], y["boxes"])


def test_info(checkpoints: dict) -> None:
    pred = CheckpointPredictor(checkpoints[("segmentation", "md16")])
    info = pred.info
    assert (info.task, info.num_classes, info.thermal_factor) == ("segmentation", 9, 16)
    assert info.format == "checkpoint" and len(info.sha256) == 64
    assert info.meta["model_kind"] == "student" and info.meta["lineage"]["store"] == "none"


@pytest.mark.parametrize(
    ("shape", "dtype", "fragment"),
    [
        ((2, 1, 20, 24), np.uint8, None),
        ((2, 1, 30, 30), np.uint8, "30x30"),
        ((2, 1, 20, 24), np.float32, "uint8"),
    ],
)
def test_thermal_size_and_dtype(
    checkpoints: dict, shape: tuple, dtype: type, fragment: str | None
) -> None:
    pred = CheckpointPredictor(checkpoints[("detection", "md16")])  # 96x80 -> 24x20 low
    visible = np.zeros((2, 3, 80, 96), np.uint8)
    thermal = np.zeros(shape, dtype)
    if fragment is None:
        with one_torch_thread():
            assert len(pred.predict(visible, thermal)) == 2
        return
    with pytest.raises(MdError, match=fragment) as err:
        pred.predict(visible, thermal)
    assert "\n" not in str(err.value)


def test_open_predictor_dispatch(checkpoints: dict, tmp_path: Path) -> None:
    assert isinstance(open_predictor(checkpoints[("detection", "md16")]), CheckpointPredictor)
    with pytest.raises(MdError, match="not found"):
        open_predictor(tmp_path / "nope.pt")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x01")
    try:
        import md.deploy.exported  # noqa: F401
    except ImportError:
        with pytest.raises(MdError, match=r"m\.onnx: running exported models needs"):
            open_predictor(onnx)


def test_truncated_checkpoint_is_one_line(checkpoints: dict, tmp_path: Path) -> None:
    data = checkpoints[("detection", "md16")].read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MdError, match=r"cut\.pt: not a readable md checkpoint") as err:
        open_predictor(bad)
    assert "\n" not in str(err.value) and "re-copy" in str(err.value)


def test_torchscript_pt_goes_to_the_exported_loader(checkpoints: dict, tmp_path: Path) -> None:
    """A TorchScript archive named .pt is not a checkpoint: it goes to md.deploy.exported
    (and, until that module exists, to the one-line error saying so)."""
    from md.deploy.loader import is_torchscript_archive

    ts = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript; such files still exist
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(ts))
    assert is_torchscript_archive(ts)
    assert not is_torchscript_archive(checkpoints[("detection", "md16")])
    try:
        import md.deploy.exported  # noqa: F401
    except ImportError:
        with pytest.raises(MdError, match=r"scripted\.pt: running exported models needs"):
            open_predictor(ts)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_predict_reads_16_bit_thermal_as_md_data_does(tmp_path, mode):
    """A 16-bit thermal TIFF opens in PIL as "I;16" or "I" (32-bit integer): md predict
    must read both as md.data does (the same pixel values), not refuse one of them."""
    from md.data.layout import decode_gray
    from md.deploy.predict import read_thermal

    values = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.int32)  # up to 59,500
    img = Image.fromarray(values, mode="I")
    path = tmp_path / "t.tif"
    (img if mode == "I" else img.convert("I;16")).save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    frame, error = read_thermal(path)
    assert error is None and frame is not None and frame.dtype == np.uint16
    np.testing.assert_array_equal(frame[0].astype(np.int64), decode_gray(path))
    np.testing.assert_array_equal(frame[0], values)
