"""The hash-chained audit log: appends chain, tampering is found, secrets never land."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from md import audit
from md.errors import MdError
from tests.conftest import run_cli


def _write_log(path: Path, n: int) -> list[str]:
    for i in range(n):
        with audited_cmd(path, f"cmd{i}"):
            pass
    return path.read_text().splitlines()


def audited_cmd(log: Path, name: str, **kw: object) -> object:
    return audit.audited(name, {}, {}, argv=["md", name], logs=[log], **kw)  # type: ignore[arg-type]


def test_chain_holds_and_lines_carry_the_fields(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write_log(log, 3)
    report = audit.verify_log(log)
    assert report.ok and report.lines == 3 and report.first_broken is None
    entries = [json.loads(x) for x in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == audit.ZERO
    import hashlib

    assert entries[1]["prev"] == hashlib.sha256(lines[0].encode()).hexdigest()
    for key in ("time", "host", "user", "tool_version", "argv", "inputs", "outputs", "outcome"):
        assert key in entries[0]
    assert entries[0]["time"].endswith("+00:00")  # UTC


def test_error_outcome_is_logged_and_reraised(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(MdError, match="boom"), audited_cmd(log, "x"):
        raise MdError("boom: the fix")
    (entry,) = audit.read_log(log)
    assert entry["outcome"] == "error" and "boom" in entry["error"]


@pytest.mark.parametrize("tamper", ["edit", "edit_rehash", "delete", "reorder", "garbage"])
def test_tampering_is_found_at_the_first_broken_line(tmp_path: Path, tamper: str) -> None:
    log = tmp_path / "audit.jsonl"
    lines = _write_log(log, 5)
    if tamper in ("edit", "edit_rehash"):
        entry = json.loads(lines[2])
        entry["outcome"] = "error"
        if tamper == "edit_rehash":  # a careful forger fixes the line's own hash ...
            entry["hash"] = audit.line_hash(entry)
        lines[2] = json.dumps(entry)
        want = 3 if tamper == "edit" else 4  # ... and the next line's prev gives it away
    elif tamper == "delete":
        del lines[1]
        want = 2
    elif tamper == "reorder":
        lines[1], lines[3] = lines[3], lines[1]
        want = 2
    else:
        lines[4] = lines[4][:-5]
        want = 5
    log.write_text("\n".join(lines) + "\n")
    report = audit.verify_log(log)
    assert not report.ok and report.first_broken == want, report
    out = run_cli("audit", "verify", str(log), expect=1)
    assert f"line {want}" in out
    log.write_text("\n".join(_write_log(tmp_path / "fresh.jsonl", 2)) + "\n")
    assert "intact" in run_cli("audit", "verify", str(log))


def _appender(log: str, k: int, n: int) -> None:
    for i in range(n):
        with audit.audited(f"p{k}-{i}", {}, {}, argv=["md"], logs=[log]):
            pass


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(str(log), k, 25)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    report = audit.verify_log(log)
    assert report.ok and report.lines == 75, report
    names = sorted(e["command"] for e in audit.read_log(log))
    assert names == sorted(f"p{k}-{i}" for k in range(3) for i in range(25))


SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
TOKEN = "ghp_abcdefSECRETTOKEN123456"


def test_no_credentials_in_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEID0001")
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", "hf_tokenvalue0042")
    log = tmp_path / "audit.jsonl"
    url = "s3://AKIAINLINEKEY:inlinesecret99@bucket/run.zarr"
    argv = [
        "md",
        "cache-teacher",
        "--store",
        url,
        f"--token={TOKEN}",
        "--api-key",
        "plainapikey77",
        "aws_secret_access_key=overridesecret55",
        f"--note={SECRET}",
    ]
    with (
        pytest.raises(MdError),
        audit.audited("cache-teacher", {"store": url}, {}, argv=argv, logs=[log]),
    ):
        raise MdError(f"{url}: access denied with {SECRET}")
    text = log.read_text()
    for secret in (
        SECRET,
        TOKEN,
        "AKIAEXAMPLEID0001",
        "hf_tokenvalue0042",
        "inlinesecret99",
        "AKIAINLINEKEY",
        "plainapikey77",
        "overridesecret55",
    ):
        assert secret not in text, secret
    assert "s3://***@bucket/run.zarr" in text  # the URL itself is kept
    assert audit.verify_log(log).ok


def test_redaction_can_fail() -> None:
    """Without the secret-named variable the value is an ordinary word and is kept."""
    assert audit.redact("x wJalr y", {"HOME": "wJalr"}) == "x wJalr y"
    assert audit.redact("x wJalr y", {"MY_SECRET": "wJalr"}) == "x *** y"


def test_verify_needs_a_log(tmp_path: Path) -> None:
    out = run_cli("audit", "verify", str(tmp_path / "none.jsonl"), expect=2)
    assert "no audit log" in out
