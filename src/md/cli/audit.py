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
    (a directory or s3://... URL: its audit/log.jsonl). Exits 1 at the first edited, deleted or moved line."""
    from md.audit import STORE_LOG, redact, verify_bytes, verify_log
    from md.errors import MdError

    if "://" in path:  # a store on object storage: its audit/log.jsonl object
        from md.stores.audit import read_store_log

        raw = read_store_log(path)
        if not raw:
            raise MdError(f"{redact(path)}: the store holds no {STORE_LOG}; nothing to verify")
        report = verify_bytes(raw, f"{redact(path)}/{STORE_LOG}")
    else:
        report = verify_log(path)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        click.echo(f"{report.path}: intact ({report.lines} lines)")
    else:
        click.echo(f"{report.path}: BROKEN at line {report.first_broken}: {report.reason}")
    if not report.ok:
        sys.exit(1)
