"""Codec presets for teacher features and attention masks, and their fidelity.

Presets (every stored chunk is ``zstd`` then ``crc32c``, ``raw``'s ``crc32c`` only, so every
shipped byte is checksummed):

- ``lossless``: features as float16; the only loss is fp16 rounding (relative error
  <= 2**-11, absolute <= 2**-25 below the fp16 normal range). Values beyond +-65504 are refused.
- ``compact``: features as uint8 codes of a square-root companded quantizer per sample and
  channel, 15 steps per sign. The channel's max ``|x|`` is rounded *up* to a log grid,
  ``a = 2**((k - 128) / 8)``, and its code ``k`` (uint8; 0 = all-zero channel) is kept in the
  side array ``feature_scale/L`` [N, C]. Then ``q = S + round(S * sign(x) * sqrt(|x| / a))``
  in [0, 2S] and ``x ~= a * sign(t) * t**2`` with ``t = (q - S) / S``. Zeros (a post-ReLU
  map has many) are exact; the error is at most ``max|x| * 2**(1/8) * (1/S + 1/(4 * S**2))``,
  smallest near zero where most values are.
- ``compact-fine``: the same with S = 31 steps per sign.
- ``raw``: the values of ``lossless`` (float16 features) with no compression at all, only the
  crc32c. For a store read where it was written, by a GPU host whose loader must keep up
  with the step: fp16 features compress only ~1.2x and the visible images bundled with
  ``--bundle-inputs`` ~1.3x, while zstd decoding them was the loader's bound (~250 samples/s
  per core at 640x512, docs/benchmarks.md). Not for shipping over a weak link.

Why these numbers (measured on a cpu-demo teacher's real features, docs/benchmarks.md): zstd
already codes these noise-like codes at their order-0 entropy (delta or bit-shuffle filters
made them larger), so bytes follow the number of steps: 31 steps give cosine >= 0.9993 at
6.2-7.0x vs float32, 15 steps 8.3x over the features with cosine >= 0.997, and MD students
trained from the two (and from lossless) land within seed noise of each other
(docs/benchmarks.md), so ``compact`` is the 15-step preset that meets the >= 8x target.
On those features a uniform grid of the same bytes did as well (47 levels: 6.8x, cosine
0.99945 vs 31 square-root steps: 7.0x, 0.99939 at c3); square-root steps are kept because
on heavy tails they hold the cosine where a uniform grid of as many levels does not
(tests/stores/test_codecs.py). The one-byte log-grid scale matters on small maps (a float32 scale was 22%
of a 128x4x5 map's bytes). zstd level 1 beats levels 3-15 on such codes.

A store decodes with the preset parameters recorded in its ``codec`` attribute
(`preset_of_store`), so stores written with an earlier ``compact`` (31 steps, md 0.1.0)
still decode exactly.

Attention masks in [0, 1] are stored as ``round(m * 255)`` uint8 (error <= 1/510).

`md.stores.fidelity.measure_fidelity` writes features through the real Zarr layout in memory
and reports bytes/sample, ratio vs float32, max abs error and cosine; `md bench codecs`
reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec

from md.errors import StoreError

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
_MASK_TOLERANCE = 1e-3  # masks slightly outside [0, 1] (float noise) are clipped, not refused


@dataclass(frozen=True)
class CodecPreset:
    """How features are stored; attention and metadata use the same compressors."""

    name: str
    feature_dtype: str  # dtype of the stored features/L array
    quantization: str  # "none" or "sqrt-uint8-per-sample-channel"
    steps: int  # quantizer steps per sign (0: not quantized)
    zstd_level: int
    description: str
    compressor: str = "zstd"  # "zstd", or "none" (crc32c only)

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    def compressors(self) -> tuple[ZstdCodec, Crc32cCodec] | tuple[Crc32cCodec]:
        """Byte codecs of every chunk: zstd, then a crc32c checksum over the compressed bytes
        (``compressor="none"``: the checksum only)."""
        if self.compressor == "none":
            return (Crc32cCodec(),)
        return (ZstdCodec(level=self.zstd_level), Crc32cCodec())

    def to_json(self) -> dict[str, Any]:
        names = ["crc32c"] if self.compressor == "none" else ["zstd", "crc32c"]
        return {**asdict(self), "compressors": names}


PRESETS: dict[str, CodecPreset] = {
    "lossless": CodecPreset(
        name="lossless",
        feature_dtype="float16",
        quantization="none",
        steps=0,
        zstd_level=3,
        description="float16 + zstd; fp16 rounding only",
    ),
    "compact": CodecPreset(
        name="compact",
        feature_dtype="uint8",
        quantization="sqrt-uint8-per-sample-channel, log2-uint8 scale (1/8 octave)",
        steps=15,
        zstd_level=1,
        description="uint8 sqrt-companded codes (15 steps per sign) per sample and channel, "
        "scale code in feature_scale/L; zstd",
    ),
    "compact-fine": CodecPreset(
        name="compact-fine",
        feature_dtype="uint8",
        quantization="sqrt-uint8-per-sample-channel, log2-uint8 scale (1/8 octave)",
        steps=31,
        zstd_level=1,
        description="uint8 sqrt-companded codes (31 steps per sign) per sample and channel, "
        "scale code in feature_scale/L; zstd",
    ),
    "raw": CodecPreset(
        name="raw",
        feature_dtype="float16",
        quantization="none",
        steps=0,
        zstd_level=0,
        description="float16, not compressed (crc32c only); fp16 rounding only",
        compressor="none",
    ),
}
_COMPRESSORS = ("zstd", "none")


def get_preset(name: str) -> CodecPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise StoreError(
            f"unknown codec preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None


_QUANTIZATIONS = ("none", "sqrt-uint8-per-sample-channel")


def preset_of_store(codec_attrs: Any, name: str) -> CodecPreset:
    """The preset a store was *written* with, from its ``codec`` attribute.

    A store decodes with the parameters recorded in it, not with today's preset of the same
    name, so a store written before a preset changed (``compact`` had 31 steps per sign up to
    md 0.1.0) still decodes exactly. Falls back to the named preset when the record is absent.
    """
    if not isinstance(codec_attrs, dict) or codec_attrs.get("name") != name:
        return get_preset(name)
    try:
        preset = CodecPreset(
            name=str(codec_attrs["name"]),
            feature_dtype=str(codec_attrs["feature_dtype"]),
            quantization=str(codec_attrs["quantization"]),
            steps=int(codec_attrs["steps"]),
            zstd_level=int(codec_attrs["zstd_level"]),
            description=str(codec_attrs.get("description", "")),
            compressor=str(codec_attrs.get("compressor", "zstd")),  # absent before `raw`
        )
    except (KeyError, TypeError, ValueError):
        raise StoreError(
            f"the store's codec record {codec_attrs!r} is damaged; re-create the store"
        ) from None
    if (
        not preset.quantization.startswith(_QUANTIZATIONS)
        or (preset.quantized and not 1 <= preset.steps <= 127)
        or preset.compressor not in _COMPRESSORS
    ):
        raise StoreError(
            f"the store uses codec {preset.quantization!r} (steps {preset.steps}, compressor "
            f"{preset.compressor!r}), unknown to this md; upgrade md"
        )
    return preset


def encode_features(x: np.ndarray, preset: CodecPreset) -> tuple[np.ndarray, np.ndarray | None]:
    """Features [n, C, H, W] -> (stored values, scale [n, C] or None).

    Raises ValueError for NaN/Inf (and, for float16, values beyond +-65504).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"features must be [n, C, H, W], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf")
    if not preset.quantized:
        peak = float(np.abs(x).max(initial=0.0))
        if peak > FP16_MAX:
            raise ValueError(
                f"features reach {peak:.4g}, beyond float16 range; use codec 'compact'"
            )
        return x.astype(np.float16), None
    return quantize_sqrt_uint8(x, preset.steps)


def decode_features(
    stored: np.ndarray, scale: np.ndarray | None, preset: CodecPreset
) -> np.ndarray:
    """Stored values (+ scale) -> float32 features [n, C, H, W]."""
    if not preset.quantized:
        return np.asarray(stored, dtype=np.float32)
    if scale is None:
        raise ValueError(f"codec {preset.name!r} needs the feature_scale side array")
    return dequantize_sqrt_uint8(stored, scale, preset.steps)


SCALE_PER_OCTAVE = 8  # scale codes per factor of 2: the grid is at most 9% coarser than needed
SCALE_OFFSET = 128  # code k <-> a = 2**((k - 128) / 8); k = 0 marks an all-zero channel
SCALE_MAX = 2.0 ** ((255 - SCALE_OFFSET) / SCALE_PER_OCTAVE)  # ~6.1e4


def encode_scale(a: np.ndarray) -> np.ndarray:
    """Channel maxima [n, C] -> uint8 codes of the smallest grid value >= a (0 for a == 0)."""
    a = np.asarray(a, dtype=np.float64)
    if (a > SCALE_MAX).any():
        raise ValueError(
            f"features reach {a.max():.4g}, beyond the compact scale range "
            f"({SCALE_MAX:.4g}); use codec 'lossless' or rescale the features"
        )
    with np.errstate(divide="ignore"):
        k = np.ceil(np.log2(np.where(a > 0, a, 1.0)) * SCALE_PER_OCTAVE - 1e-9) + SCALE_OFFSET
    return np.where(a > 0, np.clip(k, 1, 255), 0).astype(np.uint8)


def decode_scale(k: np.ndarray) -> np.ndarray:
    """uint8 scale codes -> float32 scales (0 for code 0)."""
    k = np.asarray(k, dtype=np.float64)
    a = np.exp2((k - SCALE_OFFSET) / SCALE_PER_OCTAVE)
    return np.where(k > 0, a, 0.0).astype(np.float32)


def quantize_sqrt_uint8(x: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Square-root companded codes per (sample, channel): -> (q [n,C,H,W], scale codes [n,C])."""
    if not 1 <= steps <= 127:
        raise ValueError(f"steps must be in [1, 127] to fit uint8 codes, got {steps}")
    k = encode_scale(np.abs(x).max(axis=(2, 3)))  # [n, C]
    a = decode_scale(k)  # >= the true max, so |x| / a <= 1
    safe = np.where(a > 0, a, 1.0).astype(np.float32)[..., None, None]  # all-zero channel
    t = np.sign(x) * np.sqrt(np.minimum(np.abs(x) / safe, 1.0))  # in [-1, 1]
    q = np.rint(t * steps) + steps
    return np.clip(q, 0, 2 * steps).astype(np.uint8), k


def dequantize_sqrt_uint8(q: np.ndarray, k: np.ndarray, steps: int) -> np.ndarray:
    t = (q.astype(np.float32) - steps) / steps
    return np.sign(t) * t * t * decode_scale(k)[..., None, None]


def compact_error_bound(a: np.ndarray, steps: int) -> np.ndarray:
    """Max abs error of `quantize_sqrt_uint8` per (sample, channel) whose true max |x| is `a`."""
    grid = 2.0 ** (1.0 / SCALE_PER_OCTAVE)  # the stored scale is at most this much larger
    return np.asarray(a, dtype=np.float64) * grid * (1.0 / steps + 1.0 / (4.0 * steps * steps))


def encode_attention(m: np.ndarray) -> np.ndarray:
    """Masks in [0, 1] -> uint8 round(m * 255); ValueError for NaN or values far outside."""
    m = np.asarray(m, dtype=np.float32)
    if not np.isfinite(m).all():
        raise ValueError("attention mask contains NaN or Inf")
    if m.size and (m.min() < -_MASK_TOLERANCE or m.max() > 1 + _MASK_TOLERANCE):
        raise ValueError(f"attention mask outside [0, 1] (min {m.min():.4g}, max {m.max():.4g})")
    return np.rint(np.clip(m, 0.0, 1.0) * 255.0).astype(np.uint8)


def decode_attention(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float32) / 255.0
