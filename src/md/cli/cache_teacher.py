"""`md cache-teacher`: run the teacher once over a split and write its targets to a store."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from md.config import resolve_config


@click.command("cache-teacher")
@click.option(
    "--teacher",
    type=click.Path(dir_okay=False),
    default=None,
    help="Teacher checkpoint from `md train-teacher` (GAFF fusion).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset root in the KAIST or MFNet layout.",
)
@click.option("--split", default=None, help="Split list to cache (DATA/<split>.txt) [train].")
@click.option(
    "--store",
    default=None,
    help="Store to write: a directory (e.g. train.zarr) or a URL (s3://bucket/run.zarr); "
    "resumed if it exists.",
)
@click.option(
    "--levels",
    default=None,
    help="Comma-separated fused levels, e.g. c3,c4,c5 [all GAFF levels of the teacher].",
)
@click.option(
    "--codec",
    type=click.Choice(["lossless", "compact", "compact-fine", "raw"]),
    default=None,
    help="Feature codec: lossless (fp16, ~2.4x smaller than fp32), compact (uint8, 15 steps, "
    "~8x), compact-fine (uint8, 31 steps, ~6.7x) or raw (fp16 not compressed: the fastest "
    "to read, for a store that stays on the GPU host) [lossless].",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per shard: the unit of writing and resuming [16].",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Teacher batch size [8]."
)
@click.option(
    "--flip-views",
    is_flag=True,
    default=None,
    help="Also store the teacher's outputs on horizontally flipped inputs.",
)
@click.option(
    "--bundle-inputs",
    is_flag=True,
    default=None,
    help="Also store student-resolution inputs and labels (needs --thermal-factor).",
)
@click.option(
    "--thermal-factor",
    type=click.Choice(["1", "4", "16", "64"]),
    default=None,
    help="Pixel factor of the bundled low-resolution thermal (side / 1, 2, 4, 8).",
)
@click.option(
    "--input-compression",
    type=click.Choice(["zstd", "none"]),
    default=None,
    help="Bundled inputs' chunks: zstd, or none (raw bytes + crc32c: ~1.3x the bytes, no "
    "decompression; for a GPU host's loader) [zstd].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Replace an existing store instead of resuming it.",
)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [auto].")
@click.option(
    "--amp",
    type=click.Choice(["none", "bf16"]),
    default=None,
    help="bf16 autocast of the teacher forward [none: fp32].",
)
@click.option(
    "--num-workers", type=click.IntRange(min=0), default=None, help="DataLoader processes [0]."
)
@click.option(
    "--scheduler",
    default=None,
    help="Run one Dask task per shard on the cluster of this scheduler (tcp://HOST:8786).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Run one Dask task per shard on a local cluster of N worker processes (1 thread each).",
)
@click.option(
    "--resources",
    default=None,
    help="Dask resources every shard task needs, e.g. GPU=1 (start workers with "
    "`dask worker ADDRESS --resources GPU=1`).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file of config fields (applied before the options).",
)
@click.option(
    "--ids",
    type=click.Path(dir_okay=False),
    default=None,
    help="Re-distillation request (md drift --select): cache only its frames of --data into "
    "a delta store with the base store's schema.",
)
@click.option(
    "--base-store",
    default=None,
    help="The base store of a delta (--ids) [the request's base_store].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.argument("overrides", nargs=-1)
def cache_teacher(
    config_file: str | None,
    as_json: bool,
    overrides: tuple[str, ...],
    data_dir: str | None,
    thermal_factor: str | None,
    **options: Any,
) -> None:
    """Cache a teacher's fused features and attention masks into a store.

    Runs the teacher once over the split; each finished shard is marked written, so an
    interrupted run resumes when rerun. With --scheduler or --workers, this process creates
    the store and each unwritten shard runs as one Dask task (teacher and data paths must be
    the same on every worker; --device applies there). OVERRIDES are key=value config fields.
    """
    from md.teacher_cache import CacheConfig, run

    cfg = resolve_config(
        CacheConfig,
        config_file=config_file,
        overrides=overrides,
        data=data_dir,
        thermal_factor=int(thermal_factor) if thermal_factor else None,
        **options,
    )
    from md.stores.audit import audited_store

    try:
        inputs = {"teacher": cfg.teacher, "data": cfg.data}
        with audited_store("cache-teacher", inputs, {"store": cfg.store}) as log:
            summary = run(cfg)
            log.details.update(split=cfg.split, codec=cfg.codec, complete=summary.get("complete"))
    except KeyboardInterrupt:
        click.echo(
            "interrupted: finished shards are kept; rerun the same command to resume", err=True
        )
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo("\n".join(summary_lines(summary)))


def summary_lines(s: dict[str, Any]) -> list[str]:
    """Human summary; the last line lists the stored bytes per sample of every array."""
    dask = s.get("dask")
    if s["shards_written"]:
        on = (
            f"{dask['workers_used']} Dask workers ({s['device']}) of {dask['scheduler']}"
            if dask
            else s["device"]
        )
        per = " per worker" if dask else ""
        lines = [
            f"wrote {s['shards_written']} shards ({s['samples_written']} samples, "
            f"{s['megabytes_written']:.1f} MB) to {s['store']} in {s['seconds']:.1f} s on "
            f"{on} ({s['samples_per_s']:.1f} samples/s; teacher forward alone "
            f"{s['forward_samples_per_s']:.1f} samples/s{per}); {s['shards_skipped']} finished "
            "shards skipped"
        ]
    else:
        lines = [
            f"nothing to do: the {s['shards_skipped']} shards of {s['store']} were already written"
        ]
    if not s["complete"]:
        lines.append(
            f"stopped with shards {s['missing_shards']} unwritten; rerun the same command to resume"
        )
    per = s["bytes_per_sample"]
    parts = [f"{name} {per[name]:,.0f}" for name in per if name != "total" and per[name]]
    total = f"; total {per['total']:,.0f}" if per.get("total") else ""
    lines.append(f"bytes/sample ({s['codec']}): {', '.join(parts)}{total}")
    return lines
