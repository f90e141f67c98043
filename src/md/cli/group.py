"""The click group class every `md` command group uses."""

from __future__ import annotations

from typing import Any

import click

from md.errors import MdError


class MdGroup(click.Group):
    """Turns `MdError` into one line, ``md: error: ...``, and exit status 2 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MdError as e:
            click.echo(f"md: error: {e}", err=True)
            ctx.exit(2)
