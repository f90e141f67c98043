"""`md store ...`: inspect, verify, pack and unpack teacher-target stores.

STORE is a directory, a packed .zip or an fsspec URL (``s3://bucket/run.zarr``; needs
``pip install 'md[s3]'`` and the usual AWS credentials / ``AWS_ENDPOINT_URL`` settings).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from md.audit import audited
from md.stores.audit import audited_store
from md.stores.info import info as store_info
from md.stores.pack import pack as store_pack
from md.stores.pack import unpack as store_unpack
from md.stores.verify import verify as store_verify


@click.group()
def store() -> None:
    """Teacher-target stores: inspect, verify checksums, pack for shipping, unpack."""


@store.command("info")
@click.argument("store_url", metavar="STORE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def info_cmd(store_url: str, as_json: bool) -> None:
    """Samples, completeness, arrays, bytes per sample and provenance of STORE.

    STORE is a directory, a packed .zip or a URL such as s3://bucket/run.zarr.
    """
    report = store_info(store_url)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(_info_lines(report)))


@store.command("verify")
@click.argument("store_url", metavar="STORE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(store_url: str, as_json: bool) -> None:
    """Read every chunk of STORE (checksums), check completeness, NaN/Inf and shapes.

    STORE is a directory, a packed .zip or a URL such as s3://bucket/run.zarr. Exits 1 and
    names the bad shards and samples when anything is wrong (missing or corrupt objects).
    """
    report = store_verify(store_url)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        status = "ok" if report.ok else "FAILED"
        click.echo(
            f"{report.url}: {status} ({report.samples} samples, {report.num_shards} shards, "
            f"{report.chunks_checked} chunks checked)"
        )
        for problem in report.problems:
            click.echo(f"  {problem}")
        if report.bad_shards:
            click.echo(f"  bad shards: {report.bad_shards}; bad samples: {report.bad_samples}")
    if not report.ok:
        sys.exit(1)


@store.command("pack")
@click.argument("store_url", metavar="STORE")
@click.argument("zip_path", metavar="OUT.zip", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace OUT.zip if it exists.")
@click.option(
    "--allow-incomplete", is_flag=True, help="Pack even if some shards were never written."
)
def pack_cmd(store_url: str, zip_path: str, force: bool, allow_incomplete: bool) -> None:
    """Pack STORE into local OUT.zip (stored, sha256 manifest), readable in place.

    STORE is a directory or a URL such as s3://bucket/run.zarr.
    """
    with audited("store pack", {"store": store_url}, {"zip": zip_path}):
        summary = store_pack(store_url, zip_path, allow_incomplete=allow_incomplete, force=force)
    click.echo(f"packed {summary['files']} files into {summary['zip']} ({summary['bytes']} bytes)")


@store.command("unpack")
@click.argument("zip_path", metavar="OUT.zip", type=click.Path(dir_okay=False))
@click.argument("out_dir", metavar="DEST")
def unpack_cmd(zip_path: str, out_dir: str) -> None:
    """Unpack OUT.zip into DEST after checking every member's sha256.

    DEST is a new (or empty) directory, or an empty prefix such as s3://bucket/run.zarr.
    Compressed members, and sizes that disagree with the manifest, are refused before
    anything is read; members are copied in 1 MiB pieces.
    """
    with audited_store("store unpack", {"zip": zip_path}, {"store": out_dir}):
        dest = store_unpack(zip_path, out_dir)
    click.echo(f"unpacked {zip_path} into {dest}")


def _info_lines(r: dict[str, Any]) -> list[str]:
    state = "complete" if r["complete"] else f"INCOMPLETE, missing shards {r['missing_shards']}"
    codec = r.get("codec") or {}
    lines = [
        f"store: {r['url']} ({r['backend']})",
        f"samples: {r['samples']} ({r['written']} written; {state})",
        f"shards: {r['num_shards']} of {r['shard_size']} samples",
        f"codec: {codec.get('name')} ({codec.get('description')})",
        "arrays:",
    ]
    for name, a in r["arrays"].items():
        per = r["bytes_per_sample"].get(name)
        per_text = f"{per:,.0f} B/sample" if per is not None else "-"
        shards = f" shards {a['shards']}" if a["shards"] else ""
        lines.append(
            f"  {name:<24} {a['shape']} {a['dtype']} chunks {a['chunks']}{shards} "
            f"[{', '.join(a['codecs'])}] {per_text}"
        )
    total = r["bytes_per_sample"].get("total")
    if total is not None:
        lines.append(f"total: {total:,.0f} B/sample")
    for name, ratio in r["ratio_vs_float32"].items():
        if ratio is not None:
            lines.append(f"  vs float32: {name:<20} {ratio:.2f}x smaller")
    lines.append("provenance:")
    lines += [f"  {k}: {json.dumps(v, sort_keys=True)}" for k, v in r["provenance"].items()]
    return lines
