"""The `md` command line: a click group with one thin module per command family.

Commands parse options, build a frozen config and call the family's `run(cfg)`. Errors the
user can fix (`md.errors.MdError`) are printed as one line, ``md: error: ...``, exit status 2.
"""

from __future__ import annotations

import click

from md import __version__
from md.cli.group import MdGroup


@click.group(cls=MdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="md")
def main() -> None:
    """md: Modality Distillation for low-cost visible + thermal scene analysis.

    A two-stream GAFF teacher that sees high-resolution thermal is cached once into Zarr
    stores; one-stream students that see visible + low-resolution thermal train from them.
    """


def _register() -> None:
    from md.cli import audit as audit_cli
    from md.cli import bench as bench_cli
    from md.cli import cache_teacher as cache_teacher_cli
    from md.cli import data as data_cli
    from md.cli import demo as demo_cli
    from md.cli import drift as drift_cli
    from md.cli import evaluate as evaluate_cli
    from md.cli import export as export_cli
    from md.cli import lineage as lineage_cli
    from md.cli import predict as predict_cli
    from md.cli import store as store_cli
    from md.cli import train_student as train_student_cli
    from md.cli import train_teacher as train_teacher_cli

    main.add_command(data_cli.data)
    main.add_command(store_cli.store)
    main.add_command(train_teacher_cli.train_teacher)
    main.add_command(evaluate_cli.evaluate)
    main.add_command(train_student_cli.train_student)
    main.add_command(cache_teacher_cli.cache_teacher)
    main.add_command(bench_cli.bench)
    main.add_command(demo_cli.demo)
    main.add_command(export_cli.export)
    main.add_command(predict_cli.predict)
    main.add_command(drift_cli.drift)
    main.add_command(audit_cli.audit)
    main.add_command(lineage_cli.lineage)


_register()
