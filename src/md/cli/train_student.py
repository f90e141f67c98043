"""`md train-student`: train the one-stream MD student from a teacher-target store."""

from __future__ import annotations

import json

import click

from md.cli.group import training_options
from md.config import resolve_config


def _thermal(value: str | None) -> int | str | None:
    return None if value is None else ("none" if value == "none" else int(value))


@click.command("train-student")
@click.option(
    "--store",
    "store_url",
    multiple=True,
    help="Teacher-target store from md cache-teacher (directory, .zip or URL); repeat it "
    "to add delta stores (md cache-teacher --ids) trained on with the first.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset root (KAIST or MFNet layout); optional when the store bundles "
    "the inputs and labels.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint to write (e.g. student.pt); logs and config go beside it.",
)
@click.option(
    "--task",
    type=click.Choice(["detection", "segmentation"]),
    default=None,
    help="Task; by default the store's (or the dataset's).",
)
@click.option(
    "--thermal-factor",
    type=click.Choice(["1", "4", "16", "64", "none"]),
    default=None,
    help="Thermal pixel reduction (side ÷ 1, 2, 4, 8; default 16, the "
    "paper's practical case); none = visible-only student.",
)
@click.option(
    "--no-distill",
    is_flag=True,
    help="Task loss only: the native image-level (or visible-only) student; no store needed.",
)
@click.option(
    "--online-teacher",
    type=click.Path(dir_okay=False),
    default=None,
    help="Compute the targets live with this teacher checkpoint (needs --data): the "
    "comparison point for offline speed.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    default=None,
    help="Train on the written samples of an incomplete store.",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from this student checkpoint's weights (fine-tuning).",
)
@training_options
def train_student(
    store_url: tuple[str, ...],
    init: str | None,
    data_dir: str | None,
    out: str,
    task: str | None,
    thermal_factor: str | None,
    no_distill: bool,
    online_teacher: str | None,
    allow_partial: bool | None,
    preset: str | None,
    config_file: str | None,
    resume: bool,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Train a student. OVERRIDES are key=value config fields, e.g. iterations=30
    semantic_loss=mse attention=false flip=true crop=256.

    Several processes: torchrun --nproc-per-node N -m md.cli train-student ... (gloo on CPU,
    NCCL on GPUs, one GPU per process). batch_size is the global batch (each process takes
    batch_size / N); each process reads its own shards of the store; rank 0 writes OUT."""
    from md import student_train as student

    cfg = resolve_config(
        student.StudentTrainConfig,
        presets=student.PRESETS,
        preset=preset,
        config_file=config_file,
        overrides=overrides,
        task=task,
        data=data_dir,
        store=store_url[0] if store_url else None,
        delta_stores=tuple(store_url[1:]) or None,
        init=init,
        thermal_factor=_thermal(thermal_factor),
        distill=False if no_distill else None,
        online_teacher=online_teacher,
        allow_partial=allow_partial or None,
    )
    from md.audit import audited

    inputs = {"store": cfg.store, "data": cfg.data, "online_teacher": cfg.online_teacher}
    inputs = {k: v for k, v in inputs.items() if v}
    with audited("train-student", inputs, {"checkpoint": out}) as log:
        done = student.run(cfg, out=out, resume=resume)
        log.details.update(iteration=done.loop.iteration, completed=done.loop.completed)
    if done.rank != 0:  # under torchrun rank 0 speaks for the job
        return
    if as_json:
        click.echo(json.dumps(done.summary(), indent=2))
    elif done.loop.completed:
        click.echo(
            f"wrote {done.out} ({done.loop.iteration} iterations, "
            f"{done.loop.seconds:.1f} s on {done.device}, {done.mode}; "
            f"loader wait {100 * done.loader['wait_fraction']:.0f}% of the loop)"
        )
    else:
        click.echo(f"stopped at iteration {done.loop.iteration}; continue with --resume")
