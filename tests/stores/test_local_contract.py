"""The directory backend: the contract, plus writing, resuming and creation rules."""

from __future__ import annotations

import json
import multiprocessing
import shutil
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
    groups,
    sample_ids,
    shard_arrays,
    tiny_schema,
    write_shards,
)

from md.errors import IncompleteStoreError, StoreError
from md.stores import StoreSchema, create_store, open_or_create_store, open_store, verify
from md.stores.backends import CheckedStore


class TestLocalStore(StoreContract):
    writable = True

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Builder:
        def build(
            schema: StoreSchema,
            shards: Iterable[int] | None = None,
            attrs: Mapping[str, Any] | None = None,
        ) -> str:
            return build_local(tmp_path / "store.zarr", schema, shards, attrs)

        return build


# -- writing ----------------------------------------------------------------------------------


def _fresh(tmp_path: Path, codec: str = "lossless", **kw: Any) -> Any:
    return create_store(tmp_path / "new.zarr", tiny_schema(codec, **kw), ATTRS)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: a.pop("attention/C3"), r"missing \['attention/C3'\]"),
        (lambda a: a.update(extra=np.zeros(4)), r"unexpected \['extra'\]"),
        (lambda a: a.update({"features/C4": np.zeros((3, 4, 4, 5), np.float32)}), "has shape"),
        (lambda a: a["features/C3"].__setitem__((1, 0, 0, 0), np.nan), "NaN or Inf"),
        (lambda a: a["features/C3"].__setitem__((1, 0, 0, 0), 1e6), "beyond float16"),
        (lambda a: a["attention/C3"].__setitem__((0, 0, 0, 0), 1.5), r"outside \[0, 1\]"),
    ],
)
def test_write_shard_refuses_bad_arrays(tmp_path: Path, mutate: Any, match: str) -> None:
    store = _fresh(tmp_path)
    arrays = shard_arrays(store.schema, 0)
    mutate(arrays)
    with pytest.raises(StoreError, match=rf"shard 0 \(samples 0-3\).*{match}"):
        store.write_shard(0, arrays, sample_ids(store.schema, 0), groups(store.schema, 0))
    assert store.missing_shards() == [0, 1, 2]


def test_write_shard_refuses_bad_ids_extras_and_shards(tmp_path: Path) -> None:
    store = _fresh(tmp_path, full=True)
    s = store.schema
    with pytest.raises(StoreError, match="sample_ids must be 4 strings"):
        store.write_shard(0, shard_arrays(s, 0), ["a"], groups(s, 0))
    with pytest.raises(StoreError, match="empty strings"):
        store.write_shard(0, shard_arrays(s, 0), ["", "b", "c", "d"], groups(s, 0))
    arrays = shard_arrays(s, 0)
    arrays["num_boxes"] = arrays["num_boxes"] + 0.5
    with pytest.raises(StoreError, match="num_boxes: values of dtype float64 do not fit int32"):
        store.write_shard(0, arrays, sample_ids(s, 0), groups(s, 0))
    with pytest.raises(StoreError, match="shard 3 out of range"):
        store.write_shard(3, shard_arrays(s, 0), sample_ids(s, 0), groups(s, 0))


def test_written_shard_is_refused_unless_overwrite(tmp_path: Path) -> None:
    store = _fresh(tmp_path)
    s = store.schema
    write_shards(store, [0])
    with pytest.raises(StoreError, match="already written"):
        store.write_shard(0, shard_arrays(s, 0), sample_ids(s, 0), groups(s, 0))
    store.write_shard(0, shard_arrays(s, 0, seed=7), sample_ids(s, 0), groups(s, 0), overwrite=True)
    got = open_store(store.url).read([1], names=["features/C3"])["features/C3"]
    np.testing.assert_allclose(got[0], shard_arrays(s, 0, seed=7)["features/C3"][1], rtol=2**-11)


def test_written_is_set_only_after_every_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _fresh(tmp_path)
    s = store.schema
    real_set = CheckedStore.set

    async def failing_set(self: CheckedStore, key: str, value: Any) -> None:
        if key.startswith("group/"):  # stored after every feature/attention array
            raise OSError("disk full")
        await real_set(self, key, value)

    monkeypatch.setattr(CheckedStore, "set", failing_set)
    with pytest.raises(StoreError, match="disk full"):
        store.write_shard(1, shard_arrays(s, 1), sample_ids(s, 1), groups(s, 1))
    monkeypatch.undo()
    assert store.missing_shards() == [0, 1, 2]
    with pytest.raises(IncompleteStoreError):
        open_store(store.url).read([4])


def test_lost_shard_object_raises_instead_of_zeros(local_store: Path) -> None:
    (local_store / "features" / "C3" / "c" / "1" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"features/C3/c/1/0/0/0 is missing.*md store verify"):
        open_store(local_store).read([5])
    report = verify(str(local_store))
    assert not report.ok and report.bad_shards == [1]
    assert any("missing though the shard is marked written" in p for p in report.problems)


def test_shard_stored_bytes_of_a_lost_object_is_one_line(local_store: Path) -> None:
    def of_shard_1(f: Path) -> bool:  # <array>/c/1 or <array>/c/1/0/...: shard 1's object
        parts = f.relative_to(local_store).parts
        return f.is_file() and "c" in parts and parts[parts.index("c") + 1 :][:1] == ("1",)

    with open_store(local_store) as ts:
        on_disk = [f.stat().st_size for f in local_store.rglob("*") if of_shard_1(f)]
        assert len(on_disk) == len(ts.raw_names())  # one object per array
        assert ts.shard_stored_bytes(1) == sum(on_disk)
    (local_store / "features" / "C3" / "c" / "1" / "0" / "0" / "0").unlink()
    with open_store(local_store) as ts, pytest.raises(StoreError, match=r"cannot read shard 1"):
        ts.shard_stored_bytes(1)


def _write_in_child(url: str, shards: list[int]) -> None:
    write_shards(open_store(url, mode="r+"), shards)


def test_writers_in_parallel_processes_own_disjoint_shards(tmp_path: Path) -> None:
    # What `md cache-teacher --workers N` does: one task per shard, one store, many processes.
    schema = tiny_schema("compact", n=16, shard_size=2)
    url = create_store(tmp_path / "par.zarr", schema, ATTRS).url
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_in_child, args=(url, list(range(w, 8, 2)))) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert open_store(url).is_complete() and verify(url).ok
    whole = build_local(tmp_path / "serial.zarr", schema)
    a, b = open_store(whole).read(range(16)), open_store(url).read(range(16))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# -- resuming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["lossless", "compact"])
def test_resume_skips_written_shards_and_matches_uninterrupted_run(
    tmp_path: Path, codec: str
) -> None:
    schema = tiny_schema(codec, full=True)
    whole = build_local(tmp_path / "whole.zarr", schema)
    # A first run dies after shards 0 and 2; the rerun resumes and writes only what is missing.
    build_local(tmp_path / "resumed.zarr", schema, shards=[0, 2])
    rerun = open_or_create_store(tmp_path / "resumed.zarr", schema, ATTRS)
    todo = rerun.missing_shards()
    assert todo == [1]
    write_shards(rerun, todo)
    assert rerun.is_complete()
    a, b = open_store(whole).read(range(10)), open_store(rerun.url).read(range(10))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_open_or_create_refuses_another_schema_or_teacher(tmp_path: Path) -> None:
    url = build_local(tmp_path / "s.zarr", tiny_schema(), shards=[0])
    with pytest.raises(StoreError, match="different schema"):
        open_or_create_store(url, tiny_schema("compact"), ATTRS)
    other = {**ATTRS, "teacher": {"sha256": "ff" * 32}}
    with pytest.raises(StoreError, match="attribute 'teacher'"):
        open_or_create_store(url, tiny_schema(), other)
    assert open_or_create_store(tmp_path / "new.zarr", tiny_schema(), ATTRS).missing_shards() == [
        0,
        1,
        2,
    ]


def test_refusals_name_the_flag_not_python(tmp_path: Path) -> None:
    # Issue 12: these reach the CLI user, who has --overwrite, not overwrite=True.
    url = build_local(tmp_path / "s.zarr", tiny_schema(), shards=[0])
    messages = []
    for call in (
        lambda: open_or_create_store(url, tiny_schema("compact"), ATTRS),
        lambda: open_or_create_store(url, tiny_schema(), {**ATTRS, "teacher": {"sha256": "f"}}),
        lambda: create_store(url, tiny_schema(), ATTRS),
    ):
        with pytest.raises(StoreError) as info:
            call()
        messages.append(str(info.value))
    meta = Path(url) / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["schema"]  # as a creation interrupted before its root was written
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as info:
        open_store(url)
    messages.append(str(info.value))
    for message in messages:
        assert "--overwrite" in message, message
        assert "overwrite=True" not in message and "open_or_create" not in message, message


# -- creation and attributes ------------------------------------------------------------------


def test_create_refuses_existing_store_and_foreign_directories(tmp_path: Path) -> None:
    url = build_local(tmp_path / "s.zarr", tiny_schema(), shards=[0])
    with pytest.raises(StoreError, match="already exists"):
        create_store(url, tiny_schema(), ATTRS)
    assert create_store(url, tiny_schema(), ATTRS, overwrite=True).missing_shards() == [0, 1, 2]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not a store"):
        create_store(foreign, tiny_schema(), ATTRS, overwrite=True)
    assert (foreign / "holiday.jpg").exists()


def test_attributes_are_plain_json(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="set by the store itself"):
        create_store(tmp_path / "a.zarr", tiny_schema(), {"schema": {}})
    with pytest.raises(StoreError, match="plain JSON"):
        create_store(tmp_path / "b.zarr", tiny_schema(), {"when": object()})
    store = create_store(tmp_path / "c.zarr", tiny_schema(), ATTRS)
    with pytest.raises(StoreError, match="plain JSON"):
        store.set_attrs({"loss": float("nan")})
    store.set_attrs({"note": "re-run on gateway 3"})
    on_disk = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["attributes"]
    assert on_disk["note"] == "re-run on gateway 3" and on_disk["teacher"] == ATTRS["teacher"]
    assert on_disk["schema"] == tiny_schema().to_json()


def test_opening_something_else_is_a_clear_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(plain)
    url = build_local(tmp_path / "s.zarr", tiny_schema(), shards=[0])
    meta = Path(url) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="newer than this md"):
        open_store(url)
    shutil.rmtree(url)
