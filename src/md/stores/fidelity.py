"""What a codec preset costs and loses on real features, measured through the store layout.

`measure_fidelity` encodes features [n, C, H, W] with a preset (`md.stores.codecs`), writes
them through the real Zarr layout in memory (`md.stores.encode.measure_stored_bytes`) and
reports bytes/sample, the ratio vs float32, the max abs error and the cosine per sample;
`md bench codecs` and `md.teacher_cache.fidelity` reuse it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from md.stores.codecs import CodecPreset, decode_features, encode_features, get_preset
from md.stores.encode import measure_stored_bytes


@dataclass(frozen=True)
class Fidelity:
    """What a preset costs and loses on a batch of features [n, C, H, W]."""

    preset: str
    samples: int
    bytes_per_sample: float  # stored: values + side array + crc32c + shard index
    float32_bytes_per_sample: int
    ratio_vs_float32: float
    max_abs_error: float
    cosine_min: float  # min over samples of the cosine of the flattened sample
    cosine_mean: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each flattened sample; 1.0 where both are all-zero."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    dot = (a2 * b2).sum(1)
    norm = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    both_zero = norm == 0
    return np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norm))


def measure_fidelity(x: np.ndarray, preset: CodecPreset | str, shard_size: int = 8) -> Fidelity:
    """Encode `x` [n, C, H, W] float32 with `preset` through the store layout; measure it."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    x = np.asarray(x, dtype=np.float32)
    stored, scale = encode_features(x, p)
    back = decode_features(stored, scale, p)
    cos = cosine_per_sample(x, back)
    n = len(x)
    nbytes = measure_stored_bytes(stored, scale, p, shard_size)
    f32 = int(np.prod(x.shape[1:])) * 4
    return Fidelity(
        preset=p.name,
        samples=n,
        bytes_per_sample=nbytes / n,
        float32_bytes_per_sample=f32,
        ratio_vs_float32=f32 * n / nbytes,
        max_abs_error=float(np.abs(back - x).max(initial=0.0)),
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
    )
