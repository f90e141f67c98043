"""`md store info/verify/pack/unpack` through the real CLI group."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from crafted_zips import members, write_zip

from md.cli import main


def _run(*args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(main, ["store", *args], catch_exceptions=False)
    out = result.output
    assert result.exit_code == expect, out
    return out


def test_info_text_and_json(compact_store: Path) -> None:
    text = _run("info", str(compact_store))
    assert "samples: 10 (10 written; complete)" in text
    assert "features/C3" in text and "B/sample" in text and "x smaller" in text
    report = json.loads(_run("info", str(compact_store), "--json"))
    assert {"samples", "complete", "written", "bytes_per_sample"} <= set(report)
    assert report["samples"] == 10 and report["complete"] is True
    assert report["provenance"]["teacher"]["sha256"] == "ab" * 32


def test_verify_exit_codes_and_names(local_store: Path) -> None:
    assert "ok" in _run("verify", str(local_store))
    victim = local_store / "attention" / "C3" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x01  # in the shard index
    victim.write_bytes(bytes(data))
    out = _run("verify", str(local_store), expect=1)
    assert (
        "FAILED" in out
        and "shard 2 (samples 8-9): attention/C3" in out
        and "bad shards: [2]" in out
    )
    report = json.loads(_run("verify", str(local_store), "--json", expect=1))
    assert report["ok"] is False and report["bad_shards"] == [2]


def test_pack_unpack_and_errors(local_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zip"
    assert "packed" in _run("pack", str(local_store), str(out))
    assert '"complete": true' in _run("info", str(out), "--json")
    assert "ok" in _run("verify", str(out))
    assert "unpacked" in _run("unpack", str(out), str(tmp_path / "u.zarr"))
    err = _run("pack", str(local_store), str(out), expect=2)
    assert "md: error:" in err and "already exists" in err
    err = _run("info", str(tmp_path / "nowhere.zarr"), expect=2)
    assert "md: error: no store at" in err


def test_every_option_has_help() -> None:
    from md.cli.store import store

    for name, cmd in store.commands.items():
        assert cmd.help, name
        for param in cmd.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"{name} {param.name}"


def test_compressed_zip_is_refused_in_one_line_and_leaves_nothing(
    local_store: Path, tmp_path: Path
) -> None:
    packed = tmp_path / "s.zip"
    _run("pack", str(local_store), str(packed))
    bad = write_zip(tmp_path / "bad.zip", members(packed), deflate=["zarr.json"])
    dest = tmp_path / "u.zarr"
    for args in (("unpack", str(bad), str(dest)), ("verify", str(bad))):
        err = _run(*args, expect=2)
        assert err.splitlines() == [
            f"md: error: {bad}: member zarr.json is compressed (deflate); `md store pack` "
            "writes uncompressed zips, read in place: re-pack the store with `md store pack`"
        ]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "audit.jsonl")  # pack's log
    assert left == ["bad.zip", "s.zip", "store.zarr"]
