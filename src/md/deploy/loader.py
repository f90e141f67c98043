"""`open_predictor(path)`: the `Predictor` for any model file.

A `.pt` checkpoint -> `md.deploy.checkpoint.CheckpointPredictor`; an exported file (`.onnx`,
TorchScript) -> `md.deploy.exported.open_exported`, imported lazily (it needs the `export`
extra). This lives beside `md.deploy.runtime`, not in it: both predictor modules import
`ModelInfo` from `runtime`, so a dispatch inside `runtime` would be an import cycle
(tests/test_layers.py).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from md.deploy.runtime import Predictor
from md.errors import MdError

EXPORTED_SUFFIXES = (".onnx", ".ts", ".torchscript", ".jit")


def is_torchscript_archive(path: Path) -> bool:
    """Whether a zip written by torch is a TorchScript module (it holds ``code/`` and
    ``constants.pkl``) rather than a `torch.save` checkpoint (``data.pkl`` only)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def open_predictor(path: str | Path, *, device: str = "cpu") -> Predictor:
    """The predictor for a model file: an exported file (`md.deploy.exported.exported_format`
    says which: `.onnx`, TorchScript) -> `open_exported` (ONNX Runtime / TorchScript on the
    CPU; `device` is for checkpoints); anything else -> `CheckpointPredictor`, whose reader
    refuses a file that is not a checkpoint with a one-line `MdError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MdError(f"{path}: model file not found; pass a .pt checkpoint or an exported model")
    suffix = path.suffix.lower()
    looks_exported = suffix in EXPORTED_SUFFIXES or is_torchscript_archive(path)
    try:
        from md.deploy.exported import exported_format, open_exported
    except ImportError as e:
        if looks_exported:
            raise MdError(
                f"{path}: running exported models needs md.deploy.exported, which this "
                f"installation lacks ({e}); update md (pip install 'md[export]') or pass the "
                ".pt checkpoint"
            ) from None
    else:
        if looks_exported or exported_format(path) is not None:
            return open_exported(path)
    from md.deploy.checkpoint import CheckpointPredictor

    return CheckpointPredictor(path, device=device)
