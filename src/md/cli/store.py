"""`md store ...`: inspect, verify, pack, unpack and sync teacher-target stores.

STORE is a directory, a packed .zip or an fsspec URL (``s3://bucket/run.zarr``; needs
``pip install 'md[s3]'`` and the usual AWS credentials / ``AWS_ENDPOINT_URL`` settings).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from md.audit import LOG_NAME, artifact_hash, audited, redact
from md.stores.audit import audited_store
from md.stores.info import info as store_info
from md.stores.pack import pack as store_pack
from md.stores.pack import unpack as store_unpack
from md.stores.sync import sync_store
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


@store.command("sync")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option(
    "--bandwidth-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MB/s",
    help="Copy at most this many megabytes (10^6 bytes) per second on average.",
)
@click.option(
    "--allow-incomplete", is_flag=True, help="Sync even if some shards of SRC were never written."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sync_cmd(
    src: str, dst: str, bandwidth_limit: float | None, allow_incomplete: bool, as_json: bool
) -> None:
    """Copy store SRC to DST resumably: only objects missing or differing at DST.

    SRC is a directory, a packed .zip or a URL such as s3://bucket/run.zarr; DST a directory
    or a URL. Objects are compared by sha256 and copied one at a time; after a cut, rerun the
    same command and it copies only what is still missing. DST opens as a store only once
    every object is copied and checked (its md_sync.json marker says "complete").
    """
    limit = bandwidth_limit * 1e6 if bandwidth_limit is not None else None
    # The line goes beside DST (or beside a local SRC when DST is a URL), never into DST's
    # own audit/log.jsonl: a synced store stays byte-equal to SRC, whose log it carries.
    beside = next((Path(p).resolve().parent for p in (dst, src) if "://" not in p), None)
    logs = [beside / LOG_NAME] if beside is not None and beside.is_dir() else []
    dst_out = {"path": redact(dst), "sha256": None, "kind": "store"}
    with audited("store sync", {"source": src}, {"store": dst_out}, logs=logs) as a:
        r = sync_store(
            src, dst, bandwidth_limit=limit, allow_incomplete=allow_incomplete, progress=True
        )
        a.outputs["store"] = artifact_hash(dst) if "://" not in dst else dst_out
        a.details.update(
            {k: getattr(r, k) for k in ("objects_copied", "bytes_copied", "objects_skipped")}
        )
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2, sort_keys=True))
        return
    rate = r.bytes_copied / r.seconds / 1e6 if r.seconds > 0 else 0.0
    click.echo(
        f"synced {r.src} -> {r.dst}: copied {r.objects_copied} objects ({r.bytes_copied:,} B, "
        f"{rate:.2f} MB/s), skipped {r.objects_skipped} identical, deleted {r.objects_deleted}; "
        f"verified {r.objects_total} objects ({r.bytes_total:,} B)"
    )


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
    lines.append("provenance (all of it: --json):")
    for key, value in r["provenance"].items():
        lines += _summary_lines(key, value, "  ")
    return lines


_LINE = 100  # characters of one provenance value in the text summary


def _summary_lines(key: str, value: Any, indent: str) -> list[str]:
    """`key: value` for the readable summary: scalars and short values as JSON, one level of
    a mapping expanded, anything longer shortened (lists to their length, mappings to their
    keys, strings and digests cut): the full values are in `md store info --json`."""
    text = json.dumps(value, sort_keys=True)
    if len(text) <= _LINE:
        return [f"{indent}{key}: {text}"]
    if isinstance(value, dict) and indent == "  ":
        return [f"{indent}{key}:"] + [
            line for k, v in value.items() for line in _summary_lines(k, v, indent + "  ")
        ]
    if isinstance(value, list):
        return [f"{indent}{key}: [{len(value)} items]"]
    if isinstance(value, dict):
        shown = [f"{k}={_clipped(v)}" for k, v in value.items() if not isinstance(v, (dict, list))]
        if not shown:
            names = ", ".join(list(value)[:5]) + (", …" if len(value) > 5 else "")
            return [f"{indent}{key}: {{{len(value)} keys: {names}}}"]
        rest = len(value) - len(shown)
        more = f" (+{rest} more keys)" if rest else ""
        return [f"{indent}{key}: {{{', '.join(shown)}}}{more}"]
    return [f"{indent}{key}: {text[: _LINE - 1]}…"]


def _clipped(value: Any) -> str:
    """A scalar as JSON, long strings (digests) cut to their first 12 characters."""
    text = json.dumps(value)
    return text[:13] + '…"' if isinstance(value, str) and len(value) > 16 else text
