"""A KAIST-scale dataset fingerprint keeps the root metadata small and still compares."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from contract import tiny_schema

from md.data import dataset_fingerprint, open_dataset
from md.errors import StoreError
from md.stores import create_store, open_or_create_store, open_store, verify
from md.stores.fingerprint import FILES_ARRAY
from tests.conftest import run_cli

ROLES = ("annotation", "thermal", "visible")


def _fingerprint(n: int, salt: str = "") -> dict[str, Any]:
    """A fingerprint shaped like md.data.dataset_fingerprint's for n KAIST samples; the
    combined sha256 by the formula documented there (id, role, sha256 per line)."""
    ids = sorted(f"set{i // 5000:02d}/V{i // 500 % 10:03d}/I{i:05d}" for i in range(n))
    files = {
        i: {r: hashlib.sha256(f"{salt}{i}{r}".encode()).hexdigest() for r in ROLES} for i in ids
    }
    combined = hashlib.sha256(b"md-dataset-v1\nkaist\n")
    for i in ids:
        for r in sorted(files[i]):
            combined.update(f"{i}\t{r}\t{files[i][r]}\n".encode())
    return {"layout": "kaist", "task": "detection", "num_samples": n, "ids": ids,
            "files": files, "sha256": combined.hexdigest()}  # fmt: skip


def _attrs(fp: dict[str, Any]) -> dict[str, Any]:
    return {"teacher": {"sha256": "ab" * 32}, "dataset": {"fingerprint": fp, "split": "train"}}


def test_25k_fingerprint_root_is_small_and_compares(tmp_path: Path) -> None:
    fp = _fingerprint(25_000)
    inline = len(json.dumps(fp))
    assert inline > 5_000_000  # what the root held inline before (~280 B per sample, compact JSON)
    url = tmp_path / "big.zarr"
    create_store(url, tiny_schema(), _attrs(fp)).close()
    root_bytes = (url / "zarr.json").stat().st_size
    assert root_bytes < 64_000, root_bytes
    with open_store(url) as ts:
        summary = ts.attrs["dataset"]["fingerprint"]
        assert summary["sha256"] == fp["sha256"] and summary["num_samples"] == 25_000
        assert summary["files"] == {"array": FILES_ARRAY, "entries": 75_000}
        assert ts.dataset_fingerprint() == fp  # rebuilt exactly, and checked
    # resume: the same full fingerprint matches the stored summary
    open_or_create_store(url, tiny_schema(), _attrs(fp)).close()
    other = _fingerprint(25_000, salt="x")  # one dataset of other files
    with pytest.raises(StoreError, match="differs in attribute 'dataset'"):
        open_or_create_store(url, tiny_schema(), _attrs(other))
    assert verify(url).problems == [p for p in verify(url).problems if "never written" in p]


def test_damaged_files_array_is_named(tmp_path: Path) -> None:
    fp = _fingerprint(30)
    url = tmp_path / "s.zarr"
    create_store(url, tiny_schema(), _attrs(fp)).close()
    fp2 = _fingerprint(30, salt="y")
    with create_store(tmp_path / "t.zarr", tiny_schema(), _attrs(fp2)):
        pass
    chunk = url / FILES_ARRAY / "c" / "0"
    chunk.write_bytes((tmp_path / "t.zarr" / FILES_ARRAY / "c" / "0").read_bytes())
    with open_store(url) as ts, pytest.raises(StoreError) as err:
        ts.dataset_fingerprint()
    assert "does not match the fingerprint sha256" in str(err.value)
    assert "\n" not in str(err.value)


def test_real_dataset_fingerprint_round_trips(synth_det: Path, tmp_path: Path) -> None:
    fp = dataset_fingerprint(open_dataset(synth_det, split="train"))
    url = tmp_path / "s.zarr"
    create_store(url, tiny_schema(), _attrs(fp)).close()
    with open_store(url) as ts:
        assert ts.dataset_fingerprint() == json.loads(json.dumps(fp))
        assert "ids" not in ts.attrs["dataset"]["fingerprint"]


def test_store_info_is_a_readable_summary_and_json_has_everything(tmp_path: Path) -> None:
    config = {f"opt{i}": {"lr": 0.01 * i, "layers": list(range(20))} for i in range(30)}
    attrs = _attrs(_fingerprint(25_000))
    attrs["teacher"]["config"] = config
    url = tmp_path / "s.zarr"
    create_store(url, tiny_schema(), attrs).close()
    text = run_cli("store", "info", str(url))
    lines = text.splitlines()
    assert len(lines) < 60 and max(map(len, lines)) < 200, text
    assert "num_samples=25000" in text and "config: {30 keys: opt0" in text
    report = json.loads(run_cli("store", "info", str(url), "--json"))
    assert report["provenance"]["teacher"]["config"] == config
    assert (
        report["provenance"]["dataset"]["fingerprint"]["sha256"]
        == attrs["dataset"]["fingerprint"]["sha256"]
    )
