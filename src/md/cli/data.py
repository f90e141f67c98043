"""`md data ...`: synthetic datasets and dataset inspection."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import cast

import click


@click.group()
def data() -> None:
    """Datasets: generate synthetic ones, inspect real ones (KAIST / MFNet layouts)."""


class _Size(click.ParamType):
    """``WxH`` in pixels, e.g. ``160x128``."""

    name = "WxH"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).lower().replace("*", "x")
        try:
            w, h = (int(v) for v in text.split("x"))
        except ValueError:
            self.fail(f"{value!r} is not WxH (e.g. 160x128)", param, ctx)
        return w, h


def _shares(value: str) -> tuple[float, float]:
    """``TRAIN:TEST`` shares, e.g. ``0.05:0.5``."""
    try:
        train, test = (float(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use TRAIN:TEST shares in 0..1, e.g. 0.05:0.5", param_hint="--appearance"
        ) from None
    return train, test


@data.command("synth")
@click.option(
    "--task",
    type=click.Choice(["detection", "segmentation"]),
    required=True,
    help="detection: KAIST layout with bbGt boxes; segmentation: MFNet layout with 0-8 labels.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="New (or empty) folder to write the dataset into.",
)
@click.option(
    "--n-train",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Samples in train.txt (even indices day, odd night).",
)
@click.option(
    "--n-test",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Samples in test.txt.",
)
@click.option(
    "--size",
    type=_Size(),
    default=None,
    help="Image size WxH, multiples of 8 [default: 160x128 detection, 160x120 segmentation].",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed; the same arguments always give byte-identical files.",
)
@click.option(
    "--domain",
    type=click.Choice(["none", "fog", "rain", "winter", "thermal-gain", "night-only"]),
    default="none",
    show_default=True,
    help="Shifted domain of the same scenes, for drift tests (docs/synthetic.md).",
)
@click.option(
    "--appearance",
    "appearance",
    default=None,
    metavar="TRAIN:TEST",
    help="Dress the people of this share of train / test frames in a rare appearance "
    "(pale insulated coat, cool in thermal), e.g. 0.05:0.5; recorded in annotations.json "
    "and groups.json for md evaluate model --groups appearance. Default: not drawn.",
)
def synth(
    task: str,
    out: Path,
    n_train: int,
    n_test: int,
    size: tuple[int, int] | None,
    seed: int,
    domain: str,
    appearance: str | None = None,
) -> None:
    """Render a synthetic visible + thermal dataset (KAIST or MFNet layout).

    Street scenes come from a physical model: day frames are sunlit (hot roads and walls,
    low thermal contrast of people); night frames are dark and noisy in visible while
    people stand out in thermal; distant people are small enough to vanish in
    low-resolution thermal. The same arguments give byte-identical files. See
    docs/synthetic.md.
    """
    from md.data.synthetic import SynthConfig, Task, run

    cfg = SynthConfig(
        cast(Task, task), n_train=n_train, n_test=n_test, size=size, seed=seed, domain=domain
    )
    if appearance is not None:
        cfg = replace(cfg, appearance=_shares(appearance))
    meta = run(cfg, out)
    w, h = cfg.image_size
    click.echo(
        f"wrote {n_train} train + {n_test} test {task} samples ({w}x{h}, "
        f"{meta['layout']} layout, seed {seed}"
        + (f", domain {domain}" if domain != "none" else "")
        + f") to {out}"
    )


@data.command("inspect")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--split", default=None, help="Read ROOT/SPLIT.txt (e.g. train, test); default: every sample."
)
@click.option(
    "--list",
    "list_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Read this image-set list instead of a split.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--sheet",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a contact sheet PNG (visible | thermal | labels rows).",
)
@click.option(
    "--per-group",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Day and night samples each on the contact sheet.",
)
def inspect(
    root: Path,
    split: str | None,
    list_file: Path | None,
    as_json: bool,
    sheet: Path | None,
    per_group: int,
) -> None:
    """Summarise a KAIST or MFNet dataset; check that every sample loads.

    Reports the layout, sample counts per group (day / night), and the boxes (KAIST: total,
    'reasonable', ignored) or the pixel share of each class (MFNet). Exits with status 1
    when some samples fail to load (the problems are listed), 2 on a folder in neither layout.
    """
    from md.data.inspect import format_summary, summarize, write_sheet

    summary = summarize(root, split=split, list_file=list_file)
    if sheet is not None:
        summary["sheet"] = str(write_sheet(root, sheet, split, list_file, per_group))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_summary(summary))
        if sheet is not None:
            click.echo(f"  contact sheet: {sheet}")
    if summary["problems"]:
        sys.exit(1)
