"""ResNet-18 trunk: torchvision key compatibility, pretrained loading, conv1 rule, shapes."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from md.errors import MdError
from md.models.resnet import ResNet18, adapt_conv1_weight, load_pretrained
from tests.fp import gamma

# The state_dict keys of torchvision.models.resnet18(), in order (written out: the CPU
# machines have no torchvision to ask).
TORCHVISION_RESNET18_KEYS = (
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
    "layer1.0.conv2.weight",
    "layer1.0.bn2.weight",
    "layer1.0.bn2.bias",
    "layer1.0.bn2.running_mean",
    "layer1.0.bn2.running_var",
    "layer1.0.bn2.num_batches_tracked",
    "layer1.1.conv1.weight",
    "layer1.1.bn1.weight",
    "layer1.1.bn1.bias",
    "layer1.1.bn1.running_mean",
    "layer1.1.bn1.running_var",
    "layer1.1.bn1.num_batches_tracked",
    "layer1.1.conv2.weight",
    "layer1.1.bn2.weight",
    "layer1.1.bn2.bias",
    "layer1.1.bn2.running_mean",
    "layer1.1.bn2.running_var",
    "layer1.1.bn2.num_batches_tracked",
    "layer2.0.conv1.weight",
    "layer2.0.bn1.weight",
    "layer2.0.bn1.bias",
    "layer2.0.bn1.running_mean",
    "layer2.0.bn1.running_var",
    "layer2.0.bn1.num_batches_tracked",
    "layer2.0.conv2.weight",
    "layer2.0.bn2.weight",
    "layer2.0.bn2.bias",
    "layer2.0.bn2.running_mean",
    "layer2.0.bn2.running_var",
    "layer2.0.bn2.num_batches_tracked",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias",
    "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var",
    "layer2.0.downsample.1.num_batches_tracked",
    "layer2.1.conv1.weight",
    "layer2.1.bn1.weight",
    "layer2.1.bn1.bias",
    "layer2.1.bn1.running_mean",
    "layer2.1.bn1.running_var",
    "layer2.1.bn1.num_batches_tracked",
    "layer2.1.conv2.weight",
    "layer2.1.bn2.weight",
    "layer2.1.bn2.bias",
    "layer2.1.bn2.running_mean",
    "layer2.1.bn2.running_var",
    "layer2.1.bn2.num_batches_tracked",
    "layer3.0.conv1.weight",
    "layer3.0.bn1.weight",
    "layer3.0.bn1.bias",
    "layer3.0.bn1.running_mean",
    "layer3.0.bn1.running_var",
    "layer3.0.bn1.num_batches_tracked",
    "layer3.0.conv2.weight",
    "layer3.0.bn2.weight",
    "layer3.0.bn2.bias",
    "layer3.0.bn2.running_mean",
    "layer3.0.bn2.running_var",
    "layer3.0.bn2.num_batches_tracked",
    "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.weight",
    "layer3.0.downsample.1.bias",
    "layer3.0.downsample.1.running_mean",
    "layer3.0.downsample.1.running_var",
    "layer3.0.downsample.1.num_batches_tracked",
    "layer3.1.conv1.weight",
    "layer3.1.bn1.weight",
    "layer3.1.bn1.bias",
    "layer3.1.bn1.running_mean",
    "layer3.1.bn1.running_var",
    "layer3.1.bn1.num_batches_tracked",
    "layer3.1.conv2.weight",
    "layer3.1.bn2.weight",
    "layer3.1.bn2.bias",
    "layer3.1.bn2.running_mean",
    "layer3.1.bn2.running_var",
    "layer3.1.bn2.num_batches_tracked",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "layer4.0.bn1.running_mean",
    "layer4.0.bn1.running_var",
    "layer4.0.bn1.num_batches_tracked",
    "layer4.0.conv2.weight",
    "layer4.0.bn2.weight",
    "layer4.0.bn2.bias",
    "layer4.0.bn2.running_mean",
    "layer4.0.bn2.running_var",
    "layer4.0.bn2.num_batches_tracked",
    "layer4.0.downsample.0.weight",
    "layer4.0.downsample.1.weight",
    "layer4.0.downsample.1.bias",
    "layer4.0.downsample.1.running_mean",
    "layer4.0.downsample.1.running_var",
    "layer4.0.downsample.1.num_batches_tracked",
    "layer4.1.conv1.weight",
    "layer4.1.bn1.weight",
    "layer4.1.bn1.bias",
    "layer4.1.bn1.running_mean",
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
)


def _torchvision_state_dict() -> dict[str, torch.Tensor]:
    """A torchvision-format resnet18 state dict with distinct random values everywhere
    (BN statistics included) plus the classifier fc.*; a fresh dict over shared tensors."""
    return dict(_cached_state_dict())


@functools.cache
def _cached_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for k, v in ResNet18(3).state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        else:
            state[k] = torch.rand(v.shape, generator=gen) + 0.1  # > 0: valid running_var
    state["fc.weight"] = torch.randn(1000, 512, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    assert tuple(state) == TORCHVISION_RESNET18_KEYS
    return state


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(_torchvision_state_dict(), path)
    return path


def test_state_dict_keys_match_torchvision() -> None:
    assert len(TORCHVISION_RESNET18_KEYS) == 122
    assert list(ResNet18(3).state_dict()) == [
        k for k in TORCHVISION_RESNET18_KEYS if not k.startswith("fc.")
    ]


@pytest.mark.parametrize(("width", "channels"), [(1.0, (128, 256, 512)), (0.25, (32, 64, 128))])
def test_feature_shapes(width: float, channels: tuple[int, int, int]) -> None:
    model = ResNet18(3, width=width).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert model.strides == {"c3": 8, "c4": 16, "c5": 32}
    assert model.out_channels == dict(zip(("c3", "c4", "c5"), channels, strict=True))
    for (level, stride), c in zip(model.strides.items(), channels, strict=True):
        assert out[level].shape == (2, c, 64 // stride, 96 // stride)


def test_tiny_width_keeps_at_least_8_channels() -> None:
    model = ResNet18(6, width=0.01)
    assert model.out_channels == {"c3": 8, "c4": 8, "c5": 8}
    assert model.conv1.weight.shape == (8, 6, 7, 7)


def test_load_roundtrip_3_channels(tv_file: Path) -> None:
    model = ResNet18(3)
    load_pretrained(model, tv_file)
    loaded = torch.load(tv_file, weights_only=True)
    own = model.state_dict()
    for k, v in own.items():
        assert torch.equal(v, loaded[k]), k


def test_load_6_channels_duplicates_and_halves_conv1(tv_file: Path) -> None:
    model3, model6 = ResNet18(3), ResNet18(6)
    load_pretrained(model3, tv_file)
    load_pretrained(model6, tv_file)
    w3 = model3.conv1.weight
    assert torch.equal(model6.conv1.weight, torch.cat([w3, w3], 1) / 2)
    for k, v in model6.state_dict().items():
        if k != "conv1.weight":
            assert torch.equal(v, model3.state_dict()[k]), k
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out6, out3 = model6.conv1(torch.cat([x, x], 1)), model3.conv1(x)
        # Halving is exact, so out6 and out3 are the same real sum, of 294 and 147 products:
        # in any order each errs by at most gamma_n * sum|terms|, sum|terms| = conv(|W3|, x).
        terms = F.conv2d(x.double(), w3.double().abs(), None, 2, 3)
    assert model3.conv1.stride == (2, 2) and model3.conv1.padding == (3, 3)
    bound = (gamma(294) + gamma(147)) * terms
    excess = float(((out6.double() - out3.double()).abs() / bound).max())
    assert excess <= 1, f"{excess:.3g}x the float32 bound"


def test_adapt_conv1_weight_rules() -> None:
    w = torch.randn(64, 3, 7, 7)
    assert torch.equal(adapt_conv1_weight(w, 3), w)
    assert torch.equal(adapt_conv1_weight(w, 1), w.sum(1, keepdim=True))  # the same sum
    assert adapt_conv1_weight(w, 6).shape == (64, 6, 7, 7)
    with pytest.raises(MdError, match="4 input channels"):
        adapt_conv1_weight(w, 4)


def test_loads_old_file_without_num_batches_tracked(tmp_path: Path) -> None:
    state = {k: v for k, v in _torchvision_state_dict().items() if "num_batches" not in k}
    model = ResNet18(3)
    load_pretrained(model, state)
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])  # a copy


def test_refuses_width_other_than_1(tv_file: Path) -> None:
    with pytest.raises(MdError, match=r"resnet18-f37072fd\.pth.*width"):
        load_pretrained(ResNet18(3, width=0.5), tv_file)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(MdError, match=r"nope\.pth.*not found"):
        load_pretrained(ResNet18(3), tmp_path / "nope.pth")


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(MdError, match=r"garbage\.pth"):
        load_pretrained(ResNet18(3), path)


def test_missing_and_misshaped_keys_name_the_file(tmp_path: Path) -> None:
    state = _torchvision_state_dict()
    del state["layer3.1.conv2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(MdError, match=r"partial\.pth.*layer3\.1\.conv2\.weight"):
        load_pretrained(ResNet18(3), path)

    state = _torchvision_state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "misshaped.pth"
    torch.save(state, path)
    with pytest.raises(MdError, match=r"misshaped\.pth.*layer2\.0\.conv1\.weight"):
        load_pretrained(ResNet18(3), path)


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    state = _torchvision_state_dict()
    state["layer1.2.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # a resnet34 block
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    with pytest.raises(MdError, match=r"resnet34\.pth.*unexpected.*layer1\.2"):
        load_pretrained(ResNet18(3), path)
