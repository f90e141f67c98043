"""`md train-teacher`: train the two-stream GAFF teacher or the decision-level baseline."""

from __future__ import annotations

import json

import click

from md.cli.group import training_options
from md.config import resolve_config


@click.command("train-teacher", context_settings={"ignore_unknown_options": False})
@click.option(
    "--task",
    type=click.Choice(["detection", "segmentation"]),
    default=None,
    help="Task; must match the dataset's layout (KAIST = detection, MFNet = segmentation).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset root in the KAIST or MFNet layout.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint to write (e.g. teacher.pt); logs and config go beside it.",
)
@click.option(
    "--fusion",
    type=click.Choice(["gaff", "decision"]),
    default=None,
    help="Feature-level GAFF teacher (default) or the decision-level baseline.",
)
@training_options
def train_teacher(
    task: str | None,
    data_dir: str | None,
    out: str,
    fusion: str | None,
    preset: str | None,
    config_file: str | None,
    resume: bool,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train a teacher. OVERRIDES are key=value config fields, e.g. iterations=30 seed=1."""
    from md import teacher_train as teacher

    cfg = resolve_config(
        teacher.TeacherTrainConfig,
        presets=teacher.PRESETS,
        preset=preset,
        config_file=config_file,
        overrides=overrides,
        task=task,
        data=data_dir,
        fusion=fusion,
    )
    if not cfg.data:
        raise click.UsageError("--data is required (or data: in the config file)")
    from md.audit import audited

    with audited("train-teacher", {"data": cfg.data}, {"checkpoint": out}) as log:
        done = teacher.run(cfg, out=out, resume=resume)
        log.details.update(iteration=done.loop.iteration, completed=done.loop.completed)
    if as_json:
        click.echo(json.dumps(done.summary(), indent=2))
    elif done.loop.completed:
        click.echo(
            f"wrote {done.out} ({done.loop.iteration} iterations, "
            f"{done.loop.seconds:.1f} s on {done.device})"
        )
    else:
        click.echo(f"stopped at iteration {done.loop.iteration}; continue with --resume")
