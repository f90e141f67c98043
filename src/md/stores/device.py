"""The decoding half of `TargetStore.read`, in torch, on whatever device the tensors are on.

`TargetStore.read_stored` returns targets as stored (float16 or uint8 feature codes with
uint8 scale codes, uint8 masks); the student's loader ships those to the accelerator and
`decode_features` / `decode_attention` turn them into float32 there, inside the step: the
host never materialises float32 targets (2-4x the bytes to copy) and the device does the
elementwise work.

Exactness: each function is the same sequence of IEEE float32 operations as its numpy twin
in `md.stores.codecs` (float16 -> float32 is exact; ``(q - S) / S``, then
``sign(t) * t * t * a`` left to right; ``m / 255``), with the scale taken from a 256-entry
table computed by the numpy `decode_scale` itself. Elementwise float32 +, -, *, / are
correctly rounded on CPUs and CUDA alike and none of these is a reduction, so the results
equal `TargetStore.read`'s bit for bit (tests/stores/test_read_stored.py). Nothing here may
be fused into an FMA by torch in eager mode; a ``torch.compile``d step could fuse
``t * t * a`` and change the last bit (<= 1 ulp per product).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from md.stores.codecs import CodecPreset, decode_scale
from md.stores.schema import is_attention_name, is_features_name, scale_array_name

_SCALES = torch.from_numpy(decode_scale(np.arange(256, dtype=np.uint8)))  # code -> float32
_scale_tables: dict[torch.device, Tensor] = {}


def scale_table(device: torch.device) -> Tensor:
    """The 256 float32 scales of the uint8 scale codes, on `device` (cached per device)."""
    if device not in _scale_tables:
        _scale_tables[device] = _SCALES.to(device)
    return _scale_tables[device]


def decode_features(stored: Tensor, scale: Tensor | None, preset: CodecPreset) -> Tensor:
    """Stored features (..., C, H, W) (+ uint8 scale codes (..., C)) -> float32, as
    `md.stores.codecs.decode_features` computes them. Float input passes through as float32
    (targets that were never encoded, e.g. an online teacher's)."""
    if stored.is_floating_point() or not preset.quantized:
        return stored.float()
    if scale is None:
        raise ValueError(f"codec {preset.name!r} needs the feature_scale side array")
    steps = preset.steps
    t = (stored.float() - steps) / steps
    a = scale_table(stored.device)[scale.long()]
    return torch.sign(t) * t * t * a[..., None, None]


def decode_attention(stored: Tensor) -> Tensor:
    """uint8 masks ``round(m * 255)`` -> float32 in [0, 1] (float input passes through)."""
    if stored.is_floating_point():
        return stored.float()
    return stored.float() / 255.0


def decode_target(name: str, stored: Mapping[str, Tensor], preset: CodecPreset) -> Tensor:
    """Target `name` from its stored arrays (`md.stores.encode.stored_names`), in torch:
    what `TargetStore.read` returns for it, on the tensors' device."""
    values = stored[name]
    if is_features_name(name):
        scale = stored.get(scale_array_name(name)) if preset.quantized else None
        return decode_features(values, scale, preset)
    if is_attention_name(name):
        return decode_attention(values)
    return values
