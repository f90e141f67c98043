"""`md lineage ARTIFACT`: the chain student -> store -> teacher -> data, and its check."""

from __future__ import annotations

import json
import sys

import click


@click.command("lineage")
@click.argument("artifact", metavar="ARTIFACT")
@click.option("--verify", is_flag=True, help="Recompute each hash from the artifacts given.")
@click.option("--store", "store_url", default=None, help="The store the student learned from.")
@click.option(
    "--teacher", type=click.Path(dir_okay=False), default=None, help="The teacher checkpoint."
)
@click.option("--data", type=click.Path(file_okay=False), default=None, help="The dataset root.")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="For an exported ARTIFACT: the checkpoint it was exported from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def lineage(
    artifact: str,
    verify: bool,
    store_url: str | None,
    teacher: str | None,
    data: str | None,
    checkpoint: str | None,
    as_json: bool,
) -> None:
    """Trace ARTIFACT (a student checkpoint, an exported .onnx / TorchScript model, or a
    store) back to its store, teacher and datasets, with times and tool versions.

    With --verify every link whose artifact is given is recomputed and marked holds or
    broken (the rest: not checked); exits 1 if a link is broken. See docs/audit.md.
    """
    from md.deploy.lineage import lineage as walk
    from md.deploy.lineage import report_lines

    report = walk(
        artifact, store=store_url, teacher=teacher, data=data, checkpoint=checkpoint, verify=verify
    )
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        click.echo("\n".join(report_lines(report)))
    if not report["ok"]:
        sys.exit(1)
