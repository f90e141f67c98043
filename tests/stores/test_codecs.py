"""Codec presets: error bounds and bytes on realistic (post-ReLU, GAFF-weighted) features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from contract import gaff_features

from md.errors import StoreError
from md.stores.codecs import (
    PRESETS,
    compact_error_bound,
    decode_attention,
    decode_features,
    decode_scale,
    encode_attention,
    encode_features,
    encode_scale,
    get_preset,
    preset_of_store,
)
from md.stores.fidelity import cosine_per_sample, measure_fidelity

# 4 samples of a C3-like map: big enough chunks for zstd to reach its steady ratio.
SHAPE = (4, 64, 32, 40)


@pytest.fixture(scope="module")
def feats() -> np.ndarray:
    return gaff_features(np.random.default_rng(0), SHAPE)


def test_lossless_is_fp16_rounding_only(feats: np.ndarray) -> None:
    p = get_preset("lossless")
    stored, scale = encode_features(feats, p)
    assert stored.dtype == np.float16 and scale is None
    back = decode_features(stored, scale, p)
    np.testing.assert_allclose(back, feats, rtol=2**-11, atol=2**-25)
    fid = measure_fidelity(feats, p)
    assert fid.cosine_min > 0.99999
    assert fid.ratio_vs_float32 > 2.5  # fp16 halves it; zstd takes the zeros
    assert fid.max_abs_error <= float(np.abs(feats).max()) * 2**-11


# (preset, cosine floor, ratio floor vs float32) on these maps; compact aims at >= 8x (issue 6)
COMPACT_TARGETS = [("compact", 0.997, 8.0), ("compact-fine", 0.999, 6.0)]


@pytest.mark.parametrize(("name", "min_cosine", "min_ratio"), COMPACT_TARGETS)
def test_compact_meets_its_targets(
    feats: np.ndarray, name: str, min_cosine: float, min_ratio: float
) -> None:
    p = get_preset(name)
    stored, scale = encode_features(feats, p)
    assert stored.dtype == np.uint8 and scale is not None and scale.shape == SHAPE[:2]
    back = decode_features(stored, scale, p)
    bound = compact_error_bound(np.abs(feats).max(axis=(2, 3)), p.steps)[..., None, None]
    assert (np.abs(back - feats) <= bound * (1 + 1e-5)).all()
    assert (back[feats == 0] == 0).all()  # half of a post-ReLU map is exact zeros
    fid = measure_fidelity(feats, p)
    assert fid.cosine_min >= min_cosine
    assert fid.ratio_vs_float32 >= min_ratio
    assert json.loads(json.dumps(fid.to_json()))["preset"] == name


@pytest.mark.parametrize(("name", "min_cosine"), [("compact", 0.996), ("compact-fine", 0.999)])
def test_compact_keeps_cosine_on_heavy_tails(name: str, min_cosine: float) -> None:
    # Much heavier tail than GAFF's (max/rms ~ 30): a uniform grid of as many levels falls
    # below the floor; square-root steps hold it.
    rng = np.random.default_rng(1)
    g = np.maximum(rng.standard_normal(SHAPE), 0)
    x = (g * np.exp(1.5 * rng.standard_normal(SHAPE))).astype(np.float32)
    assert measure_fidelity(x, name).cosine_min >= min_cosine
    steps = get_preset(name).steps
    a = decode_scale(encode_scale(np.abs(x).max(axis=(2, 3))))[..., None, None]
    uniform = np.rint(np.clip(x / np.where(a > 0, a, 1), 0, 1) * 2 * steps) / (2 * steps) * a
    assert cosine_per_sample(x, uniform).min() < min_cosine


def test_a_store_decodes_with_the_preset_it_was_written_with() -> None:
    # compact had 31 steps per sign in md 0.1.0: such a store keeps decoding with 31
    old = {**get_preset("compact-fine").to_json(), "name": "compact"}
    assert preset_of_store(old, "compact").steps == 31
    assert preset_of_store(None, "compact") == get_preset("compact")
    with pytest.raises(StoreError, match="unknown to this md"):
        preset_of_store({**old, "quantization": "lloyd-max"}, "compact")
    with pytest.raises(StoreError, match="damaged"):
        preset_of_store({"name": "compact", "steps": "x"}, "compact")
    # records from before `raw` have no compressor field: they were zstd
    lossless = get_preset("lossless").to_json()
    del lossless["compressor"]
    assert preset_of_store(lossless, "lossless") == get_preset("lossless")
    assert preset_of_store(get_preset("raw").to_json(), "raw") == get_preset("raw")
    with pytest.raises(StoreError, match=r"compressor 'lz5'.*unknown to this md"):
        preset_of_store({**get_preset("raw").to_json(), "compressor": "lz5"}, "raw")


def test_compact_handles_signed_and_all_zero_channels() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    x[0, 1] = 0.0
    p = get_preset("compact")
    stored, scale = encode_features(x, p)
    assert scale is not None and scale[0, 1] == 0
    back = decode_features(stored, scale, p)
    assert (back[0, 1] == 0).all()
    assert (
        np.abs(back - x)
        <= compact_error_bound(np.abs(x).max(axis=(2, 3)), p.steps)[..., None, None] * (1 + 1e-5)
    ).all()


def test_scale_codes_cover_the_data_on_a_log_grid() -> None:
    a = np.array([[0.0, 1.0, 1.05, 3.0, 1e-4]])
    k = encode_scale(a)
    back = decode_scale(k)
    assert k[0, 0] == 0 and back[0, 0] == 0  # all-zero channel
    assert k[0, 1] == 128 and back[0, 1] == 1.0  # exact powers of two stay exact
    assert (back[0, 1:] >= a[0, 1:]).all()  # rounded up: codes never clip the data
    assert (back[0, 1:] <= a[0, 1:] * 2 ** (1 / 8) * (1 + 1e-6)).all()
    with pytest.raises(ValueError, match="beyond the compact scale range"):
        encode_scale(np.array([[1e6]]))


def test_attention_is_round_m_times_255() -> None:
    m = np.random.default_rng(3).random((2, 1, 7, 9)).astype(np.float32)
    q = encode_attention(m)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, np.rint(m * 255).astype(np.uint8))
    assert np.abs(decode_attention(q) - m).max() <= 1 / 510 + 1e-7
    assert encode_attention(np.array([-1e-4, 1 + 1e-4])).tolist() == [0, 255]  # float noise clipped
    with pytest.raises(ValueError, match="outside"):
        encode_attention(np.array([1.2]))
    with pytest.raises(ValueError, match="NaN"):
        encode_attention(np.array([np.nan]))


def test_bad_features_and_presets() -> None:
    with pytest.raises(ValueError, match="float16 range"):
        encode_features(np.full((1, 1, 1, 1), 7e4, np.float32), get_preset("lossless"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode_features(np.full((1, 1, 1, 1), np.inf, np.float32), get_preset("compact"))
    with pytest.raises(StoreError, match="unknown codec preset 'tiny'"):
        get_preset("tiny")
    for preset in PRESETS.values():  # every chunk is checksummed; all but raw compressed
        want = ["crc32c"] if preset.name == "raw" else ["zstd", "crc32c"]
        assert json.loads(json.dumps(preset.to_json()))["compressors"] == want
        assert [c.to_dict()["name"] for c in preset.compressors()] == want
