"""`md cache-teacher` into a bucket, `md store verify/info` on it, and `md train-student`
streaming from it, DataLoader workers included (each forked worker opens its own S3 client)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from md.models.checkpoint import load_checkpoint
from tests.conftest import run_cli
from tests.s3server import S3Server

CACHE = ("--shard-size", "4", "--batch-size", "4", "progress=false")
TRAIN = ("--preset", "cpu-tiny", "batch_size=2", "progress=false", "iterations=2")


def _cache(teacher: Path, data: Path, url: str, *extra: str) -> str:
    return run_cli(
        "cache-teacher",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--store",
        url,
        *CACHE,
        *extra,
    )


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["weights"], load_checkpoint(b)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cache_verify_info_resume_and_overwrite_on_s3(
    s3_bucket: str, s3_env: S3Server, s3_teacher: Path, synth_det: Path
) -> None:
    url = f"s3://{s3_bucket}/runs/train.zarr"
    summary = json.loads(_cache(s3_teacher, synth_det, url, "--json"))
    assert summary["store"] == url and summary["complete"] and summary["shards_written"] == 2
    assert "ok (8 samples, 2 shards" in run_cli("store", "verify", url)
    report = json.loads(run_cli("store", "info", url, "--json"))
    assert report["backend"] == "fsspec" and report["written"] == 8
    assert report["bytes_per_sample"] == summary["bytes_per_sample"]
    # A rerun resumes (nothing left to do); --overwrite replaces the prefix.
    assert "nothing to do" in _cache(s3_teacher, synth_det, url)
    redo = json.loads(_cache(s3_teacher, synth_det, url, "--overwrite", "--json"))
    assert redo["shards_written"] == 2 and redo["complete"]
    # A lost object is found by verify, named by shard.
    s3_env.client().delete_object(Bucket=s3_bucket, Key="runs/train.zarr/attention/c4/c/1/0/0/0")
    out = run_cli("store", "verify", url, expect=1)
    assert "FAILED" in out and "bad shards: [1]" in out


def test_a_live_lease_refuses_a_second_writer_on_s3(
    s3_bucket: str, s3_env: S3Server, s3_teacher: Path, synth_det: Path
) -> None:
    """Another run's unexpired lease beside the store: refused in one line naming it, nothing
    written; once that lease has expired (its run died), the cache takes over, and releases
    the lease when done."""
    url = f"s3://{s3_bucket}/leased/train.zarr"
    lease = {"owner": "x", "pid": 777, "host": "hub-1", "started": "t", "command": "md cache",
             "expires": time.time() + 300}  # fmt: skip
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="leased/train.zarr.lease", Body=json.dumps(lease))
    out = run_cli("cache-teacher", "--teacher", str(s3_teacher), "--data", str(synth_det),
                  "--store", url, *CACHE, expect=2)  # fmt: skip
    assert "being written by another run (pid 777 on hub-1" in out and "expires in" in out
    assert s3_env.keys(s3_bucket, "leased/") == ["leased/train.zarr.lease"]
    lease["expires"] = time.time() - 1
    client.put_object(Bucket=s3_bucket, Key="leased/train.zarr.lease", Body=json.dumps(lease))
    assert json.loads(_cache(s3_teacher, synth_det, url, "--json"))["complete"]
    assert "leased/train.zarr.lease" not in s3_env.keys(s3_bucket, "leased/")


def test_train_student_streams_from_s3_with_two_workers(
    s3_bucket: str, s3_teacher: Path, synth_det: Path, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/train.zarr"
    _cache(s3_teacher, synth_det, url)
    out = tmp_path / "student.pt"
    run_cli(
        "train-student",
        "--out",
        str(out),
        "--store",
        url,
        "--data",
        str(synth_det),
        *TRAIN,
        "num_workers=2",
    )
    lineage = load_checkpoint(out, task="detection", model_kind="student")["lineage"]
    assert lineage["store"]["url"] == url and lineage["store"]["samples_used"] == 8


@pytest.mark.slow
def test_s3_store_trains_to_the_same_weights_as_on_disk(
    s3_bucket: str, s3_teacher: Path, synth_det: Path, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/train.zarr"
    _cache(s3_teacher, synth_det, url)
    local = tmp_path / "train.zarr"
    _cache(s3_teacher, synth_det, str(local))
    args = ("--data", str(synth_det), *TRAIN)
    run_cli(
        "train-student", "--out", str(tmp_path / "s3.pt"), "--store", url, *args, "num_workers=2"
    )
    run_cli("train-student", "--out", str(tmp_path / "disk.pt"), "--store", str(local), *args)
    assert _same_weights(tmp_path / "s3.pt", tmp_path / "disk.pt")
