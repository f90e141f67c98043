"""The packed-zip backend (read-only) and an fsspec backend (memory://) pass the contract."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from contract import ATTRS, Builder, StoreContract, build_local, write_shards
from crafted_zips import members, patch_central, write_zip

from md.errors import StoreError
from md.stores import StoreSchema, create_store, info, open_store, pack


class TestZipStore(StoreContract):
    writable = False

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Builder:
        def build(
            schema: StoreSchema,
            shards: Iterable[int] | None = None,
            attrs: Mapping[str, Any] | None = None,
        ) -> str:
            src = build_local(tmp_path / "src.zarr", schema, shards, attrs)
            pack(src, tmp_path / "store.zip", allow_incomplete=True)
            return str(tmp_path / "store.zip")

        return build

    @pytest.fixture
    def missing_url(self, tmp_path: Path) -> str:
        return str(tmp_path / "absent.zip")


def test_zip_cannot_be_created(tmp_path: Path) -> None:
    from contract import tiny_schema

    with pytest.raises(StoreError, match="read-only"):
        create_store(tmp_path / "new.zip", tiny_schema(), ATTRS)


class TestFsspecMemoryStore(StoreContract):
    """memory:// stands in for s3:// (same FsspecStore path, no server needed)."""

    writable = True

    @pytest.fixture
    def make_store(self) -> Builder:
        def build(
            schema: StoreSchema,
            shards: Iterable[int] | None = None,
            attrs: Mapping[str, Any] | None = None,
        ) -> str:
            url = f"memory://md-tests/{uuid.uuid4().hex}/store.zarr"
            with create_store(url, schema, ATTRS if attrs is None else attrs) as store:
                write_shards(store, shards)
            return url

        return build

    @pytest.fixture
    def missing_url(self) -> str:
        return f"memory://md-tests/{uuid.uuid4().hex}/absent.zarr"


@pytest.mark.parametrize(
    ("kind", "match"),
    [("deflate", r"member zarr\.json is compressed \(deflate\)"), ("encrypt", "is encrypted")],
)
def test_zip_store_refuses_members_it_would_have_to_inflate(
    tmp_path: Path, kind: str, match: str
) -> None:
    from contract import tiny_schema

    packed = tmp_path / "s.zip"
    pack(build_local(tmp_path / "src.zarr", tiny_schema()), packed)
    if kind == "deflate":
        bad = write_zip(tmp_path / "bad.zip", members(packed), deflate=["zarr.json"])
    else:
        bad = packed
        patch_central(bad, "zarr.json", flags=1)
    with pytest.raises(StoreError, match=match):
        open_store(bad)
    with pytest.raises(StoreError, match=match):
        info(bad)
