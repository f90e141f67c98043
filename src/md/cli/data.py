"""`md data ...`: synthetic datasets and dataset inspection."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Datasets: generate synthetic ones, inspect real ones (KAIST / MFNet layouts)."""
