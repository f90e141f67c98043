"""`md demo`: synthetic data -> teacher -> cache -> native and MD students -> report.md."""

from __future__ import annotations

import click


@click.command("demo")
@click.option(
    "--out",
    default="demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder; report.md, figures and every intermediate land here.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="The same path at tiny sizes (a minute or two on 2 CPU cores): a smoke "
    "test; its students are too undertrained to compare.",
)
@click.option(
    "--task",
    type=click.Choice(["detection", "segmentation"]),
    default="detection",
    show_default=True,
    help="detection: KAIST layout; segmentation: MFNet layout.",
)
@click.option(
    "--seeds",
    default="0",
    show_default=True,
    help="Comma-separated student seeds (the table shows mean ± SE).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Students trained at once (one torch thread each).",
)
def demo(out: str, quick: bool, task: str, seeds: str, workers: int) -> None:
    """Run the whole MD pipeline on synthetic data and write OUT/report.md.

    Native and MD students for thermal factors 1, 4, 16, 64 and visible-only; the report
    opens with an MD Table 3/4-shaped table, then figures. Uses a GPU when there is one.
    """
    from md import demo as demo_mod

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(
            f"{seeds!r} is not a comma-separated list of integers", param_hint="--seeds"
        ) from None
    cfg = demo_mod.DemoConfig(
        out=out,
        quick=quick,
        task=task,  # type: ignore[arg-type]
        seeds=seed_list,
        workers=workers,
    )
    demo_mod.run(cfg, echo=lambda s: click.echo(s, err=True))
