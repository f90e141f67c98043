"""The click group class every `md` command group uses."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from md.errors import MdError, disk_error


def error_prefix() -> str:
    """``md: error:``, tagged with the rank under torchrun (every rank reports its own error,
    and they need not be the same one: one rank may hit a bad shard the others never read)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"md: error (rank {os.environ.get('RANK', '?')}):"
    return "md: error:"


class MdGroup(click.Group):
    """Turns `MdError` (and an OSError of a full disk, read-only filesystem or missing
    permission) into one line, ``md: error: ...``, and exit status 2 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MdError as e:
            click.echo(f"{error_prefix()} {e}", err=True)
            ctx.exit(2)
        except OSError as e:  # a write no command anticipated: a full disk is still one line
            err = disk_error(e, e.filename or "a file", "its output")
            if err is None:
                raise
            click.echo(f"{error_prefix()} {err}", err=True)
            ctx.exit(2)


F = TypeVar("F", bound=Callable[..., Any])


def training_options(fn: F) -> F:
    """--preset / --config / --resume / --json and key=value OVERRIDES, shared by every
    training command (train-teacher, train-student) so they cannot drift apart."""
    decorators = [
        click.option(
            "--preset",
            type=click.Choice(["cpu-tiny", "cpu-demo", "gpu-full"]),
            default=None,
            help="Size preset: cpu-tiny (seconds), cpu-demo (the demo), gpu-full (the paper).",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            default=None,
            help="YAML file of config fields (applied after the preset).",
        ),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue an interrupted run from OUT.resume (same data and options).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON."),
        click.argument("overrides", nargs=-1),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn
