"""`md drift`: score incoming unlabeled frames against a store's reference statistics."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("drift")
@click.option("--store", required=True, help="Store cached by md cache-teacher (the reference).")
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="Incoming frames as a dataset (KAIST or MFNet layout; labels unused).",
)
@click.option("--split", default=None, help="Read DATA/SPLIT.txt [every sample].")
@click.option(
    "--visible-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of visible frames.",
)
@click.option(
    "--thermal-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder of thermal frames, named like the visible ones.",
)
@click.option(
    "--student",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also score the student's features against the teacher's (store with bundled inputs).",
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="False-alarm rate of the overall verdict (split over the tests).",
)
@click.option(
    "--select",
    "select_k",
    type=click.IntRange(min=1),
    default=None,
    help="Write a re-distillation request of the K frames of highest drift contribution.",
)
@click.option(
    "--request",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Request file to write with --select [drift-request.json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def drift(
    store: str,
    data: str | None,
    split: str | None,
    visible_dir: str | None,
    thermal_dir: str | None,
    student: str | None,
    alpha: float,
    select_k: int | None,
    request: Path | None,
    as_json: bool,
) -> None:
    """Score frames for drift from the data STORE was cached on.

    One test per modality (intensity histograms) and, with --student, per level (the
    student's features against the teacher's stored feature statistics); each threshold is
    calibrated on the store's held-out in-distribution frames. Exit status 0 whatever the
    verdict (it is data); 2 on errors. See docs/drift.md.
    """
    from md.deploy.drift import (
        check_sources,
        format_report,
        frames_from_data,
        frames_from_dirs,
        score,
        write_request,
    )

    check_sources(data, visible_dir, thermal_dir)
    frames = (
        frames_from_data(data, split)
        if data
        else frames_from_dirs(str(visible_dir), str(thermal_dir))
    )
    report = score(store, frames, alpha=alpha, student=student)
    if select_k is not None:
        report["request"] = write_request(
            report, frames, select_k, request or Path("drift-request.json")
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(format_report(report)))
        if "request" in report:
            r = report["request"]
            click.echo(f"wrote a request for {r['frames']} frames to {r['path']}")
