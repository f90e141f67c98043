"""Re-distillation requests (`md drift --select K` writes them; `md cache-teacher --ids`
reads them): the frames a gateway asks the hub's teacher to look at.

JSON: ``kind`` = ``md-redistill-request``, ``version``, ``base_store`` (the store the gateway
trains on), ``selected_by``, and ``frames``: [{``id``, ``contribution``, ``files``:
{``visible``/``thermal``: {``path``, ``sha256``}}}], ids as in the dataset layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from md.errors import DataError

REQUEST_KIND = "md-redistill-request"
REQUEST_VERSION = 1


def read_request(path: str | Path) -> dict[str, Any]:
    """A request file as `md drift --select` writes it; one-line `DataError` otherwise."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(
            f"{p}: not a readable request file ({type(e).__name__}); write it with "
            "md drift --select K --request FILE"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != REQUEST_KIND or not doc.get("frames"):
        raise DataError(
            f"{p}: not an md re-distillation request; write it with md drift --select K"
        )
    return doc


def request_ids(doc: dict[str, Any]) -> list[str]:
    return [str(f["id"]) for f in doc["frames"]]
