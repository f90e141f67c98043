"""`md audit verify PATH`: walk an audit log's hash chain and report the first broken line."""

from __future__ import annotations

import json
import sys

import click


@click.group("audit")
def audit() -> None:
    """The hash-chained audit logs md commands append (see docs/audit.md)."""


@audit.command("verify")
@click.argument("path", metavar="PATH")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(path: str, as_json: bool) -> None:
    """Check the chain of PATH: an audit.jsonl file, a folder holding one, or a store
    directory (its audit/log.jsonl). Exits 1 at the first edited, deleted or moved line."""
    from md.audit import verify_log

    report = verify_log(path)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        click.echo(f"{report.path}: intact ({report.lines} lines)")
    else:
        click.echo(f"{report.path}: BROKEN at line {report.first_broken}: {report.reason}")
    if not report.ok:
        sys.exit(1)
