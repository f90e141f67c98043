"""Seeded image corruptions for robustness tests: what a deployed camera pair suffers.

`get_corruption("name[:severity]", seed=0)` returns a callable
``(visible (B, 3, H, W), thermal (B, 1, H, W), sample_ids) -> (visible, thermal)`` on float
tensors in [0, 1] at full resolution (before the student's thermal reduction). Each sample
is corrupted on its own, from a random stream seeded by (seed, corruption name, sample id)
only, so the result does not depend on the batch it came in, its position there, or the
device. The random field does not depend on the severity either: a higher severity scales
the same noise, kills a superset of the same pixels, and so on, so "worse" is worse for
every sample, not only on average. Severity 0 is the identity (the inputs are returned).

=================  ==========  ==============================================================
name               modality    severity 1 .. 5
=================  ==========  ==============================================================
thermal_noise      thermal     additive Gaussian noise, sigma 0.02 .. 0.18 (of full scale)
thermal_dead       thermal     dead (0) pixels 1 .. 20 % and dead columns 1 .. 12 %
thermal_drift      thermal     gain 1 +- 0.1 .. 0.6 and an offset ramp across the frame
                               of +- 0.03 .. 0.2 (a drifting, non-uniform sensor)
fog                visible     blend towards light grey, 15 .. 75 %
blur               visible     Gaussian blur, sigma 0.5 .. 3 px
low_light          visible     brightness x 0.5 .. 0.04 plus sensor noise (sigma 0.01 .. 0.03)
jpeg               both        JPEG round trip at quality 60 .. 8
=================  ==========  ==============================================================

Outputs keep the inputs' shape and dtype and stay in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from md.errors import ConfigError

Tensors = tuple[torch.Tensor, torch.Tensor]
SampleFn = Callable[[torch.Tensor, torch.Tensor, int, torch.Generator], Tensors]

MAX_SEVERITY = 5
DEFAULT_SEVERITY = 3


def _noise(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    sigma = (0.02, 0.04, 0.08, 0.12, 0.18)[s - 1]
    z = torch.randn(t.shape, generator=g, dtype=torch.float32)
    return v, (t + sigma * z.to(t.dtype)).clamp_(0, 1)


def _dead(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    pixels = (0.01, 0.02, 0.05, 0.10, 0.20)[s - 1]
    columns = (0.01, 0.02, 0.04, 0.08, 0.12)[s - 1]
    u = torch.rand(t.shape, generator=g)
    c = torch.rand(t.shape[-1], generator=g)
    dead = (u < pixels) | (c < columns)  # nested across severities: same u, c
    return v, t.masked_fill(dead, 0.0)


def _drift(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    gain = (0.1, 0.2, 0.3, 0.45, 0.6)[s - 1]
    offset = (0.03, 0.06, 0.1, 0.15, 0.2)[s - 1]
    sign = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
    direction = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
    width = t.shape[-1]
    ramp = torch.linspace(-1.0, 1.0, width, dtype=t.dtype) * direction
    return v, (t * (1 + sign * gain) + offset * ramp).clamp_(0, 1)


def _fog(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    alpha = (0.15, 0.3, 0.45, 0.6, 0.75)[s - 1]
    return v * (1 - alpha) + alpha * 0.8, t


def _blur(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    sigma = (0.5, 1.0, 1.5, 2.0, 3.0)[s - 1]
    radius = int(np.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(v.dtype)
    img = v[:, None]  # (3, 1, H, W): one channel at a time
    pad = min(radius, v.shape[-1] - 1, v.shape[-2] - 1)
    k = k[radius - pad : radius + pad + 1]
    k = k / k.sum()  # trimmed for images narrower than the kernel: keep it normalised
    img = F.pad(img, (pad, pad, 0, 0), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1))
    img = F.pad(img, (0, 0, pad, pad), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, -1, 1))
    return img[:, 0].clamp_(0, 1), t


def _low_light(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    factor = (0.5, 0.3, 0.15, 0.08, 0.04)[s - 1]
    sigma = (0.01, 0.015, 0.02, 0.025, 0.03)[s - 1]
    z = torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype)
    return (v * factor + sigma * z).clamp_(0, 1), t


def _jpeg(v: torch.Tensor, t: torch.Tensor, s: int, g: torch.Generator) -> Tensors:
    quality = (60, 40, 25, 15, 8)[s - 1]
    return _jpeg_round_trip(v, quality), _jpeg_round_trip(t, quality)


def _jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> 8 bits -> JPEG at `quality` -> back (same dtype)."""
    a = (x.detach().cpu().double() * 255).round().clamp(0, 255).to(torch.uint8)
    arr = a.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)  # baseline, 4:2:0 for RGB: PIL's default
    buf.seek(0)
    with Image.open(buf) as back:
        out = np.asarray(back.convert(img.mode))
    out = out[..., None] if out.ndim == 2 else out
    return torch.from_numpy(np.array(out, copy=True)).permute(2, 0, 1).to(x.dtype).div(255)


CORRUPTIONS: dict[str, SampleFn] = {
    "thermal_noise": _noise,
    "thermal_dead": _dead,
    "thermal_drift": _drift,
    "fog": _fog,
    "blur": _blur,
    "low_light": _low_light,
    "jpeg": _jpeg,
}
MODALITY = {
    "thermal_noise": "thermal",
    "thermal_dead": "thermal",
    "thermal_drift": "thermal",
    "fog": "visible",
    "blur": "visible",
    "low_light": "visible",
    "jpeg": "both",
}


def sample_seed(seed: int, name: str, sample_id: str) -> int:
    """A 63-bit seed from (seed, corruption, sample id): stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Corruption:
    """A corruption at one severity; call it on a batch (see the module docstring)."""

    name: str
    severity: int
    seed: int = 0

    def __call__(
        self, visible: torch.Tensor, thermal: torch.Tensor, sample_ids: Sequence[str]
    ) -> Tensors:
        if visible.dim() != 4 or thermal.dim() != 4 or len(sample_ids) != len(visible):
            raise ValueError(
                f"corruption {self.name}: expected visible (B, 3, H, W), thermal (B, 1, H, W) "
                f"and B sample ids, got {tuple(visible.shape)}, {tuple(thermal.shape)}, "
                f"{len(sample_ids)} ids"
            )
        if self.severity == 0:
            return visible, thermal
        fn = CORRUPTIONS[self.name]
        vs, ts = [], []
        for i, sid in enumerate(sample_ids):  # one sample at a time: batch-independent
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.name, str(sid)))
            v, t = fn(visible[i].cpu(), thermal[i].cpu(), self.severity, g)
            vs.append(v.to(visible.dtype))
            ts.append(t.to(thermal.dtype))
        return (
            torch.stack(vs).to(visible.device),
            torch.stack(ts).to(thermal.device),
        )

    @property
    def label(self) -> str:
        return f"{self.name}:{self.severity}"


def get_corruption(spec: str, seed: int = 0) -> Corruption:
    """``"name"`` (severity 3) or ``"name:severity"`` (0..5; 0 is the identity)."""
    name, _, sev = spec.strip().partition(":")
    if name not in CORRUPTIONS:
        raise ConfigError(
            f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)} "
            "(optionally :severity 0..5)"
        )
    try:
        severity = int(sev) if sev else DEFAULT_SEVERITY
    except ValueError:
        severity = -1
    if not 0 <= severity <= MAX_SEVERITY:
        raise ConfigError(f"corruption {spec!r}: severity must be an integer 0..5")
    return Corruption(name, severity, seed)
