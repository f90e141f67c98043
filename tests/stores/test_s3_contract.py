"""Stores on S3-compatible object storage (moto's server on 127.0.0.1): the contract, and
what a bucket adds: exists checks, overwrite of a prefix, resume, verify of missing and
corrupt objects, pack / unpack, requests per batch, one-line errors."""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contract import (
    ATTRS,
    Builder,
    StoreContract,
    build_local,
    tiny_schema,
    write_shards,
)

from md.errors import StoreError
from md.stores import (
    StoreSchema,
    create_store,
    info,
    open_or_create_store,
    open_store,
    pack,
    unpack,
    verify,
)
from md.stores.backends import CheckedStore, StoreAccessError
from md.stores.pack import MANIFEST_NAME
from tests.conftest import run_cli
from tests.s3server import S3Server, drop_s3_clients


def build_s3(
    url: str,
    schema: StoreSchema,
    shards: Iterable[int] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> str:
    with create_store(url, schema, ATTRS if attrs is None else attrs) as store:
        write_shards(store, shards)
    return url


class TestS3Store(StoreContract):
    writable = True

    @pytest.fixture
    def make_store(self, s3_bucket: str) -> Builder:
        def build(
            schema: StoreSchema,
            shards: Iterable[int] | None = None,
            attrs: Mapping[str, Any] | None = None,
        ) -> str:
            return build_s3(f"s3://{s3_bucket}/store.zarr", schema, shards, attrs)

        return build

    @pytest.fixture
    def missing_url(self, s3_bucket: str) -> str:
        return f"s3://{s3_bucket}/absent.zarr"


# -- creation, exists, overwrite, resume ------------------------------------------------------


def test_create_resume_and_overwrite_a_prefix(s3_bucket: str, s3_env: S3Server) -> None:
    url = f"s3://{s3_bucket}/run.zarr"
    schema = tiny_schema()
    build_s3(url, schema, shards=[0, 2])
    with pytest.raises(StoreError, match="already exists"):
        create_store(url, schema, ATTRS)
    # Resume: the same schema and provenance reopen the store; only shard 1 is left.
    rerun = open_or_create_store(url, schema, ATTRS)
    assert rerun.missing_shards() == [1]
    write_shards(rerun, [1])
    assert open_store(url).is_complete()
    # Overwrite deletes the old prefix: no object of the old shards survives; a neighbour
    # whose name starts the same is left alone.
    neighbour = build_s3(f"{url}2", schema, shards=[0])
    assert "run.zarr/features/C3/c/1/0/0/0" in s3_env.keys(s3_bucket, "run.zarr/")
    fresh = create_store(url, schema, ATTRS, overwrite=True)
    assert fresh.missing_shards() == [0, 1, 2]
    assert not any("/c/" in k and "written" not in k for k in s3_env.keys(s3_bucket, "run.zarr/"))
    assert open_store(neighbour).missing_shards() == [1, 2]
    with pytest.raises(StoreError, match="give the store a prefix inside the bucket"):
        create_store(f"s3://{s3_bucket}", schema, ATTRS, overwrite=True)
    # A prefix holding other objects is no store: never written over, even with overwrite.
    s3_env.client().put_object(Bucket=s3_bucket, Key="photos/holiday.jpg", Body=b"x")
    with pytest.raises(StoreError, match="holds objects but no store"):
        create_store(f"s3://{s3_bucket}/photos", schema, ATTRS, overwrite=True)
    assert s3_env.keys(s3_bucket, "photos/") == ["photos/holiday.jpg"]


# -- verify: missing and corrupt objects -------------------------------------------------------


def test_verify_finds_missing_and_corrupt_objects(s3_bucket: str, s3_env: S3Server) -> None:
    url = build_s3(f"s3://{s3_bucket}/v.zarr", tiny_schema())
    assert verify(url).ok
    client = s3_env.client()
    client.delete_object(Bucket=s3_bucket, Key="v.zarr/attention/C4/c/2/0/0/0")
    key = "v.zarr/features/C3/c/1/0/0/0"
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 4] ^= 0xFF  # inside the first sample's chunk
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    report = verify(url)
    assert not report.ok and report.bad_shards == [1, 2]
    text = "\n".join(report.problems)
    assert "attention/C4/c/2/0/0/0 is missing though the shard is marked written" in text
    assert "shard 1 (samples 4-7): features/C3: crc32c checksum mismatch in samples 4" in text
    # A batch read (all arrays at once) raises too, never returns zeros or garbage.
    with pytest.raises(StoreError, match=r"attention/C4/c/2/0/0/0 is missing although"):
        open_store(url).read([8, 9])
    with pytest.raises(StoreError, match=r"cannot read features/C3 .*md store verify"):
        open_store(url).read([0, 4])


# -- info, pack, unpack --------------------------------------------------------------------------


def test_info_matches_the_same_store_on_disk(s3_bucket: str, tmp_path: Path) -> None:
    schema = tiny_schema("compact", full=True)
    remote = info(build_s3(f"s3://{s3_bucket}/i.zarr", schema))
    local = info(build_local(tmp_path / "i.zarr", schema))
    assert remote["backend"] == "fsspec" and remote["complete"]
    assert remote["bytes_per_sample"] == local["bytes_per_sample"]


def test_pack_from_s3_and_unpack_to_s3(
    s3_bucket: str, s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = tiny_schema("compact")
    src = build_s3(f"s3://{s3_bucket}/src.zarr", schema)
    local = build_local(tmp_path / "src.zarr", schema)
    pack(src, tmp_path / "s3.zip")
    pack(local, tmp_path / "local.zip")
    with zipfile.ZipFile(tmp_path / "s3.zip") as a, zipfile.ZipFile(tmp_path / "local.zip") as b:
        manifest_a, manifest_b = (json.loads(z.read(MANIFEST_NAME))["files"] for z in (a, b))
    assert set(manifest_a) == set(manifest_b)  # same objects; attrs differ only in 'created'
    chunks = {k: v for k, v in manifest_a.items() if "/c/" in k}
    assert chunks == {k: v for k, v in manifest_b.items() if "/c/" in k}
    # Unpack into a new prefix: the root zarr.json goes last, then the store reads the same.
    order: list[str] = []
    real_set = CheckedStore.set

    async def recording_set(self: CheckedStore, key: str, value: Any) -> None:
        order.append(key)
        await real_set(self, key, value)

    monkeypatch.setattr(CheckedStore, "set", recording_set)
    dest = unpack(tmp_path / "s3.zip", f"s3://{s3_bucket}/dest.zarr")
    monkeypatch.undo()
    assert dest == f"s3://{s3_bucket}/dest.zarr" and order[-1] == "zarr.json"
    assert verify(dest).ok
    a, b = open_store(src).read(range(10)), open_store(dest).read(range(10))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with pytest.raises(StoreError, match="is not empty"):
        unpack(tmp_path / "s3.zip", dest)


def test_store_cli_on_s3_urls(s3_bucket: str, tmp_path: Path) -> None:
    url = build_s3(f"s3://{s3_bucket}/cli.zarr", tiny_schema(), shards=[0, 1])
    assert f"store: {url} (fsspec)" in run_cli("store", "info", url)
    out = run_cli("store", "verify", url, expect=1)
    assert "FAILED" in out and "incomplete: shards [2] were never written" in out
    run_cli("store", "pack", url, str(tmp_path / "p.zip"), "--allow-incomplete")
    dest = f"s3://{s3_bucket}/unpacked.zarr"
    assert f"unpacked {tmp_path / 'p.zip'} into {dest}" in run_cli(
        "store", "unpack", str(tmp_path / "p.zip"), dest
    )
    assert json.loads(run_cli("store", "info", dest, "--json"))["missing_shards"] == [2]


# -- requests per batch --------------------------------------------------------------------------


def test_batch_from_one_shard_costs_one_request_per_sample_and_array(
    s3_bucket: str, s3_env: S3Server
) -> None:
    # The bound the trainer relies on: a batch of B samples of one shard costs at most
    # B + 1 requests per array (the shard index once per shard and process, then one byte
    # range per sample), and a cached shard's index is never fetched again.
    schema = tiny_schema(n=32, shard_size=16)
    url = build_s3(f"s3://{s3_bucket}/r.zarr", schema)
    names = ["features/C3", "attention/C3", "features/C4", "attention/C4"]  # sharded arrays
    store = open_store(url)
    store.read([0], names=["sample_id"])  # opens the handle, reads `written` of shard 0
    store.raw_arrays(names)  # array metadata: once per process, not per batch
    counter = store._handle().store
    a = len(names)

    def cost(indices: list[int]) -> tuple[int, int, int]:
        """(md's requests, HTTP requests the server saw, index fetches) of one read."""
        before = (counter.requests, s3_env.requests, counter.index_reads)
        store.read(indices, names=names)
        after = (counter.requests, s3_env.requests, counter.index_reads)
        return after[0] - before[0], after[1] - before[1], after[2] - before[2]

    b = 4
    assert cost([3, 5, 7, 11]) == (a * (b + 1), a * (b + 1), a)  # first touch of shard 0
    assert cost([2, 4, 6, 8]) == (a * b, a * b, 0)  # cached indexes: one range per sample
    assert cost([9, 9, 12]) == (a * 2, a * 2, 0)  # duplicates are read once
    assert cost([16, 17, 18, 19]) == (1 + a * (b + 1), 1 + a * (b + 1), a)  # + its `written`


# -- one-line errors -----------------------------------------------------------------------------


def test_missing_bucket_is_named(s3_env: S3Server, tmp_path: Path) -> None:
    url = "s3://md-no-such-bucket/run.zarr"
    with pytest.raises(StoreAccessError, match="bucket 'md-no-such-bucket' does not exist"):
        open_store(url)
    with pytest.raises(StoreAccessError, match="bucket 'md-no-such-bucket' does not exist"):
        create_store(url, tiny_schema(), ATTRS)
    out = run_cli("store", "info", url, expect=2)
    assert out.count("\n") == 1 and "md: error:" in out and "does not exist" in out


@pytest.fixture
def fresh_clients(s3_env: S3Server) -> Iterable[None]:
    """Forget cached S3 clients before and after a test that changes credentials/endpoint."""
    drop_s3_clients()
    yield
    drop_s3_clients()


def test_no_credentials_is_named(
    s3_bucket: str, fresh_clients: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = f"s3://{s3_bucket}/run.zarr"
    with pytest.raises(StoreAccessError, match=f"no credentials for {url}.*AWS_ACCESS_KEY_ID"):
        open_store(url)
    out = run_cli("store", "verify", url, expect=2)
    assert out.count("\n") == 1 and "md: error: no credentials" in out


def test_unreachable_endpoint_is_named(
    s3_bucket: str, fresh_clients: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries: the test stays fast
    url = f"s3://{s3_bucket}/run.zarr"
    with pytest.raises(StoreAccessError, match=r"cannot reach the endpoint.*AWS_ENDPOINT_URL"):
        create_store(url, tiny_schema(), ATTRS)


def test_missing_s3fs_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = importlib.import_module("fsspec.registry")  # the module, not fsspec.registry
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails
    with pytest.raises(StoreError, match=r"s3fs .* is not installed; pip install 'md\[s3\]'"):
        open_store("s3://any-bucket/run.zarr")


def test_profile_and_fsspec_config_settings_are_used(
    s3_bucket: str,
    s3_env: S3Server,
    fresh_clients: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec.config

    url = build_s3(f"s3://{s3_bucket}/p.zarr", tiny_schema(), shards=[0])
    drop_s3_clients()
    # Credentials from a ~/.aws-style profile, the endpoint from fsspec's config (what
    # FSSPEC_S3_ENDPOINT_URL or ~/.config/fsspec/s3.json set), no AWS_* keys in the env.
    creds = tmp_path / "credentials"
    creds.write_text("[md-test]\naws_access_key_id = md\naws_secret_access_key = md\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "md-test")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_env.endpoint})
    assert open_store(url).missing_shards() == [1, 2]
