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
from typing import Any

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


def open_predictor(path: str | Path, **kwargs: Any) -> Predictor:
    """The predictor for a model file: a `.pt` checkpoint -> `CheckpointPredictor`; an
    exported file (`.onnx`, TorchScript) -> `md.deploy.exported.open_exported`.

    ``kwargs`` go to the predictor (``device``, ...). A missing file, or an exported file
    without the export support installed, is a one-line `MdError`.
    """
    path = Path(path)
    if not path.is_file():
        raise MdError(f"{path}: model file not found; pass a .pt checkpoint or an exported model")
    suffix = path.suffix.lower()
    if suffix in EXPORTED_SUFFIXES or (suffix in (".pt", ".pth") and is_torchscript_archive(path)):
        try:
            from md.deploy.exported import open_exported  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise MdError(
                f"{path}: running exported models needs md.deploy.exported, which this "
                f"installation lacks ({e}); update md (pip install 'md[export]') or pass the "
                ".pt checkpoint"
            ) from None
        return open_exported(path, **kwargs)  # type: ignore[no-any-return,unused-ignore]
    from md.deploy.checkpoint import CheckpointPredictor

    return CheckpointPredictor(path, **kwargs)
