"""`md cache-teacher` as the student tests call it (small shards, quiet)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

CACHE = ("--shard-size", "4", "--batch-size", "4", "progress=false")


def cache(teacher: Path, data: Path, store: Path, *extra: str) -> Path:
    """Cache `teacher` over `data`'s train split into `store`; returns `store`."""
    run_cli(
        "cache-teacher",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--store",
        str(store),
        *CACHE,
        *extra,
    )
    return store
