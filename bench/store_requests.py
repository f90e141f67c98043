"""Requests and bytes per sample when the trainer streams a store, and the batch-read speedup.

    python bench/store_requests.py [--samples 128] [--shard-size 16] [--batch-size 16]
                                   [--latency-ms 10] [--batches 8] [--out FILE.json]

Builds a lossless store (three levels, features + attention: what `md train-student` reads
per batch) on disk, packs it and unpacks it into a bucket of moto's S3 server (its own
process, on 127.0.0.1; tests/s3server.py), then:

- **requests**: one cold pass (fresh handle: shard indexes not cached yet) over every sample
  in three orders, batch by batch: sequential, shard-aware shuffled (the trainer's
  `ShardAwareSampler`, windows of 4 shards) and fully random. Per sample: data requests
  md sent (`CheckedStore.requests`), shard-index fetches, HTTP requests the server saw, bytes
  md received and bytes the server sent.
- **batch_read**: ms per batch of `TargetStore.read` (every array of the batch fetched at
  once) against one `read` per array in turn (what `read` did before), on the same warm
  handle, interleaved batch by batch; on disk, on S3 as is (loopback), and on S3 with
  `--latency-ms` added per request by the server (an object store a few ms away).

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.s3server

from md.stores import LevelSpec, StoreSchema, TargetStore, create_store, open_store, pack, unpack
from md.student_train.loader import ShardAwareSampler
from tests.s3server import S3Server, drop_s3_clients, s3_missing

LEVELS = (  # a 0.25-width teacher on 320x256 inputs: 143 KB of fp16 features per sample
    LevelSpec("C3", 32, 32, 40, 8),
    LevelSpec("C4", 64, 16, 20, 16),
    LevelSpec("C5", 128, 8, 10, 32),
)


def build_local(path: Path, n: int, shard_size: int) -> str:
    """A complete lossless store of post-ReLU-like features (half zeros) and masks."""
    schema = StoreSchema(n, shard_size, LEVELS)
    rng = np.random.default_rng(0)
    with create_store(path, schema, {"bench": "store_requests"}) as store:
        for k in range(schema.num_shards):
            size = len(schema.shard_range(k))
            arrays = {}
            for name, shape in schema.target_shapes().items():
                x = rng.standard_normal((size, *shape)).astype(np.float32)
                arrays[name] = (
                    np.maximum(x, 0) if name.startswith("features") else 1 / (1 + np.exp(-x))
                )
            ids = [f"s{i:06d}" for i in schema.shard_range(k)]
            store.write_shard(k, arrays, ids, ["day"] * size)
    return str(path)


def orders(n: int, shard_size: int, batch: int) -> dict[str, list[np.ndarray]]:
    """Batches of sample indices for one pass in each order."""
    seq = np.arange(n)
    sampler = ShardAwareSampler(n, shard_size, np.ones(n, bool), batch, seed=0, window_shards=4)
    shard_aware = np.array([row for b in sampler for row, _ in b])
    rand = np.random.default_rng(1).permutation(n)
    cut = lambda order: [order[i : i + batch] for i in range(0, n, batch)]  # noqa: E731
    return {"sequential": cut(seq), "shard_aware": cut(shard_aware), "random": cut(rand)}


def count_pass(url: str, batches: list[np.ndarray], names: list[str], server: S3Server) -> dict:
    """One cold pass: a fresh handle, every batch read once."""
    store = open_store(url)
    store.written_mask()  # the trainer reads it once to build its sampler
    checked = store._handle().store
    arrays = store.raw_arrays(names)  # open metadata now: not counted per sample
    assert len(arrays) == len(names)
    r0, i0, b0 = checked.requests, checked.index_reads, checked.bytes_read
    h0, s0 = server.requests, server.bytes_sent
    for idx in batches:
        store.read(idx, names=names)
    n = sum(len(b) for b in batches)
    out = {
        "store_requests_per_sample": (checked.requests - r0) / n,
        "index_reads": checked.index_reads - i0,
        "http_requests_per_sample": (server.requests - h0) / n,
        "bytes_per_sample": (checked.bytes_read - b0) / n,
        "http_bytes_per_sample": (server.bytes_sent - s0) / n,
    }
    store.close()
    return out


def time_reads(url: str, batches: list[np.ndarray], names: list[str], repeats: int) -> dict:
    """ms per batch: all arrays at once vs one `read` per array, interleaved, warm handle."""
    store = open_store(url)
    for idx in batches:  # warm: indexes and `written` cached, as in a running trainer
        store.read(idx, names=names)
    together = apart = 0.0
    for _ in range(repeats):
        for idx in batches:
            t0 = time.perf_counter()
            a = store.read(idx, names=names)
            t1 = time.perf_counter()
            b = {name: store.read(idx, names=[name])[name] for name in names}
            t2 = time.perf_counter()
            together, apart = together + t1 - t0, apart + t2 - t1
            assert all(np.array_equal(a[k], b[k]) for k in names)
    store.close()
    count = repeats * len(batches)
    return {
        "concurrent_ms_per_batch": 1e3 * together / count,
        "per_array_ms_per_batch": 1e3 * apart / count,
        "speedup": apart / together,
    }


def s3_copy(server: S3Server, zip_path: Path) -> str:
    os.environ.update(server.env())
    drop_s3_clients()  # a new endpoint: resolve it again
    server.create_bucket("md-bench")
    url = "s3://md-bench/run.zarr"
    unpack(zip_path, url)
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--latency-ms", default="10,50", help="Comma-separated latencies added per request."
    )
    ap.add_argument("--batches", type=int, default=8, help="Batches per timing repeat.")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = ap.parse_args()
    if reason := s3_missing():
        sys.exit(f"bench/store_requests.py needs the dev extra: {reason}")
    names = [*StoreSchema(1, 1, LEVELS).target_shapes()]  # features/L, attention/L
    passes = orders(args.samples, args.shard_size, args.batch_size)
    timed = passes["shard_aware"][: args.batches]
    with tempfile.TemporaryDirectory(prefix="md-bench-s3-") as tmp:
        local = build_local(Path(tmp) / "run.zarr", args.samples, args.shard_size)
        pack(local, Path(tmp) / "run.zip")
        stored = sum(TargetStore(local).stored_bytes(name) for name in names)
        result: dict[str, Any] = {
            "setup": {
                "samples": args.samples,
                "shard_size": args.shard_size,
                "batch_size": args.batch_size,
                "arrays_read": names,
                "stored_bytes_per_sample": stored / args.samples,
                "latency_ms_added": args.latency_ms,
                "timed_batches": len(timed) * args.repeats,
                "server": "moto (own process, 127.0.0.1)",
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
            },
            "batch_read": {"local": time_reads(local, timed, names, args.repeats)},
        }
        with S3Server(in_process=False) as server:
            url = s3_copy(server, Path(tmp) / "run.zip")
            result["requests"] = {
                order: count_pass(url, batches, names, server) for order, batches in passes.items()
            }
            result["batch_read"]["s3"] = time_reads(url, timed, names, args.repeats)
        for ms in [float(x) for x in args.latency_ms.split(",") if float(x) > 0]:
            with S3Server(in_process=False, latency_s=ms / 1e3) as slow:
                url = s3_copy(slow, Path(tmp) / "run.zip")
                result["batch_read"][f"s3_plus_{ms:g}ms"] = time_reads(
                    url, timed, names, args.repeats
                )
        drop_s3_clients()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
