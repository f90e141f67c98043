"""`md lineage ARTIFACT`: walk (and with --verify, check) an artifact's chain."""

from __future__ import annotations

import click


@click.command("lineage")
@click.argument("artifact")
def lineage(artifact: str) -> None:
    """Stub."""
