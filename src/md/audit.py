"""A tamper-evident audit log: one JSON line per state-changing command, hash-chained.

Each line is a JSON object with (in this order): ``seq`` (1-based), ``prev`` (sha256 of the
previous line's bytes, without its newline; 64 zeros on the first line), ``time`` (UTC, ISO
8601), ``host``, ``user``, ``tool_version``, ``command`` (a name such as ``cache-teacher``),
``argv`` (the command line, credentials redacted), ``inputs`` and ``outputs``
(``{role: {"path", "sha256"}}``), ``outcome`` (``ok`` or ``error``), ``error`` (the message,
redacted; null when ok), and ``hash``: the sha256 of the line's canonical JSON without
``hash`` (sorted keys, compact separators). An edited line fails its own ``hash`` (or, if
the editor recomputed it, the next line's ``prev``); a deleted or moved line breaks the
``prev`` of the line after it. `verify_log` reports the first line that does not hold.
Removing lines from the *end* of a log cannot be seen from the log alone: compare ``seq``
with a copy (the store's log and the log beside the outputs both hold the line).

Where the logs live (``md.audit.log_paths``):

- beside every output, ``audit.jsonl`` in the output's directory (one chain per directory:
  ``runs/teacher.pt`` logs to ``runs/audit.jsonl``);
- inside every local directory store the command wrote, ``STORE/audit/log.jsonl``, so the
  log ships with ``md store pack`` (the zip holds it) and ``unpack`` (which continues it).

Appends hold an exclusive ``flock`` on the log file while they read the last line and write
the new one, so concurrent processes never interleave or fork the chain (not reliable on
network filesystems without flock). Nothing from the environment is logged; the command
line and error text go through `redact`, which masks credentials in URLs
(``s3://KEY:SECRET@...``), values of options and ``key=value`` overrides whose name says
secret / token / password / key / credential, and any substring equal to the value of such
an environment variable (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ...).

This module sits at the bottom layer: it knows paths and bytes only. A store's identity
hash is the sha256 of its root group attributes (``zarr.json``) without ``last_run`` —
`md.student_train.provenance.store_lineage` computes the same value (``attrs_sha256``).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from md import __version__
from md.errors import MdError

LOG_NAME = "audit.jsonl"  # beside outputs
STORE_LOG = "audit/log.jsonl"  # inside a directory store
ZERO = "0" * 64
MASK = "***"
_SECRET_NAME = re.compile(r"secret|token|passw|credential|api[_-]?key|access[_-]?key", re.I)
_URL_CREDS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<creds>[^/@\s]+)@")
_OPT_VALUE = re.compile(
    r"(?P<name>--?[A-Za-z0-9_\-]*(?:secret|token|passw|credential|key)[A-Za-z0-9_\-]*)"
    r"(?P<sep>=)(?P<value>\S+)",
    re.I,
)
_KV = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\-]*(?:secret|token|passw|credential|key)[A-Za-z0-9_.\-]*)=(?P<v>.+)$",
    re.I,
)


def _secret_values(env: Mapping[str, str]) -> list[str]:
    """Values of secret-named environment variables (4+ characters), longest first."""
    vals = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 4}
    return sorted(vals, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with credentials masked (see the module docstring)."""
    env = os.environ if env is None else env
    for value in _secret_values(env):
        text = text.replace(value, MASK)
    text = _URL_CREDS.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _OPT_VALUE.sub(lambda m: f"{m['name']}={MASK}", text)
    return text


def redact_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The command line with credentials masked, including ``--token VALUE`` pairs."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        kv = _KV.match(arg)
        if kv and not arg.startswith("-"):
            out.append(f"{kv['name']}={MASK}")
            continue
        if arg.startswith("-") and "=" not in arg and _SECRET_NAME.search(arg):
            mask_next = True
        if arg.startswith("-") and "=" not in arg and re.search(r"key$", arg, re.I):
            mask_next = True
        out.append(redact(arg, env))
    return out


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the entry's canonical JSON without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def store_identity_sha256(root: str | os.PathLike[str]) -> str | None:
    """sha256 of a directory store's root attributes without ``last_run`` (None: no store)."""
    meta = Path(root) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes") or {}
    except (OSError, ValueError):
        return None
    return hashlib.sha256(
        json.dumps(
            {k: v for k, v in attrs.items() if k != "last_run"},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()


def artifact_hash(path: Any) -> dict[str, Any]:
    """``{"path", "sha256", "kind"}`` of an input or output: a file's bytes, a directory
    store's identity (`store_identity_sha256`), or nothing for URLs and missing paths."""
    if path is None:
        return {"path": None, "sha256": None, "kind": None}
    if isinstance(path, Mapping):  # already hashed by the caller (e.g. a dataset fingerprint)
        return json.loads(redact(json.dumps(dict(path), default=str)))
    text = redact(str(path))
    if "://" in str(path):
        return {"path": text, "sha256": None, "kind": "url"}
    p = Path(path)
    if p.is_file():
        return {"path": text, "sha256": file_sha256(p), "kind": "file"}
    if p.is_dir():
        sha = store_identity_sha256(p)
        return {"path": text, "sha256": sha, "kind": "store" if sha else "directory"}
    return {"path": text, "sha256": None, "kind": "missing"}


def _last_line(f: Any) -> tuple[bytes | None, int]:
    """(last non-empty line, number of lines) of an open binary file."""
    f.seek(0)
    last, count = None, 0
    for raw in f:
        raw = raw.rstrip(b"\n")
        if raw:
            last, count = raw, count + 1
    return last, count


def chain_line(existing: bytes, entry: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The line that follows the log bytes `existing`: (entry with ``seq``, ``prev``,
    ``hash``; its bytes with the newline). For logs read and rewritten whole (objects)."""
    lines = [x for x in existing.split(b"\n") if x]
    line: dict[str, Any] = {
        "seq": len(lines) + 1,
        "prev": hashlib.sha256(lines[-1]).hexdigest() if lines else ZERO,
        **{k: v for k, v in entry.items() if k not in ("seq", "prev", "hash")},
    }
    line["hash"] = line_hash(line)
    return line, json.dumps(line, ensure_ascii=True).encode() + b"\n"


def append(log: str | os.PathLike[str], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Append `entry` to `log` under an exclusive lock, chained to the last line; returns
    the line written (with ``seq``, ``prev`` and ``hash``)."""
    path = Path(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            last, count = _last_line(f)
            line: dict[str, Any] = {
                "seq": count + 1,
                "prev": hashlib.sha256(last).hexdigest() if last is not None else ZERO,
                **{k: v for k, v in entry.items() if k not in ("seq", "prev", "hash")},
            }
            line["hash"] = line_hash(line)
            f.seek(0, os.SEEK_END)
            f.write(json.dumps(line, ensure_ascii=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return line


@dataclass
class VerifyReport:
    path: str
    lines: int
    ok: bool
    first_broken: int | None = None  # 1-based line number
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": self.lines,
            "ok": self.ok,
            "first_broken": self.first_broken,
            "reason": self.reason,
        }


def verify_log(log: str | os.PathLike[str]) -> VerifyReport:
    """Walk the chain of `log`; the first line whose JSON, ``hash``, ``prev`` or ``seq``
    does not hold is reported. A missing file is an `MdError`."""
    path = Path(log)
    if path.is_dir():
        for cand in (path / STORE_LOG, path / LOG_NAME):
            if cand.is_file():
                path = cand
                break
    if not path.is_file():
        raise MdError(
            f"{log}: no audit log there; pass an audit.jsonl file, or a directory or store "
            "that holds one"
        )
    return verify_bytes(path.read_bytes(), str(path))


def verify_bytes(data: bytes, name: str) -> VerifyReport:
    """`verify_log` of a log's bytes (e.g. an object read from a remote store)."""
    prev, n = ZERO, 0
    for n, raw in enumerate(data.split(b"\n")[: -1 if data.endswith(b"\n") else None], 1):
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
        except ValueError:
            return VerifyReport(name, n, False, n, "not a JSON object")
        if entry.get("hash") != line_hash(entry):
            return VerifyReport(name, n, False, n, "line edited (its hash differs)")
        if entry.get("prev") != prev:
            return VerifyReport(
                name, n, False, n, "chain broken (prev is not the line before's sha256)"
            )
        if entry.get("seq") != n:
            return VerifyReport(name, n, False, n, f"seq {entry.get('seq')} at line {n}")
        prev = hashlib.sha256(raw).hexdigest()
    return VerifyReport(name, n, True)


def read_log(log: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(log).read_text().splitlines() if x.strip()]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return str(os.getuid())


def log_paths(
    outputs: Mapping[str, Any], extra: Sequence[str | os.PathLike[str]] = ()
) -> list[Path]:
    """The logs a command with these outputs appends to: ``audit.jsonl`` in each local
    output's directory, ``audit/log.jsonl`` in each local directory store, and `extra`."""
    logs: list[Path] = []
    for out in outputs.values():
        if out is None or isinstance(out, Mapping) or "://" in str(out):
            continue
        p = Path(out)
        if p.is_dir() and (p / "zarr.json").is_file():
            logs.append(p / STORE_LOG)
        elif p.is_dir():  # a results folder (md predict's OUT): its log is inside it
            logs.append(p / LOG_NAME)
            continue
        if p.resolve().parent.is_dir():
            logs.append(p.resolve().parent / LOG_NAME)
    logs += [Path(x) for x in extra]
    seen: list[Path] = []
    for log in logs:
        if log.resolve() not in [s.resolve() for s in seen]:
            seen.append(log)
    return seen


@dataclass
class Audited:
    """What `audited` yields: a command may add inputs / outputs or details as it runs."""

    command: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    logs: list[Any] = field(default_factory=list)  # filled in when written (paths, URLs)
    extra_logs: list[str] = field(default_factory=list)
    remote: Callable[[str, dict[str, Any]], None] | None = None


def entry_for(a: Audited, outcome: str, error: str | None, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "user": _user(),
        "tool_version": __version__,
        "command": a.command,
        "argv": redact_argv(list(argv)),
        "inputs": {k: artifact_hash(v) for k, v in a.inputs.items()},
        "outputs": {k: artifact_hash(v) for k, v in a.outputs.items()},
        "details": json.loads(redact(json.dumps(a.details, default=str))),
        "outcome": outcome,
        "error": redact(error) if error is not None else None,
    }


@contextlib.contextmanager
def audited(
    command: str,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    *,
    argv: Sequence[str] | None = None,
    logs: Sequence[str | os.PathLike[str]] = (),
    remote: Callable[[str, dict[str, Any]], None] | None = None,
) -> Iterator[Audited]:
    """Run the body and append one line (outcome ok, or error with its message) to every
    log of `log_paths(outputs, logs)`; hashes are taken when the body ends. An error is
    appended only to logs that exist already (and to `logs`): a failed first run in a
    folder leaves no file behind. The body's
    exception propagates unchanged. Set ``MD_AUDIT=0`` to switch logging off.

    `remote(url, entry)` appends to the log inside each output that is a URL (a store on
    object storage: `md.stores.audit.append_to_store`); without it URL outputs get no line.

    Usage: ``with audited("store sync", {"source": src}, {"store": dest}): ...``.
    """
    a = Audited(command, dict(inputs or {}), dict(outputs or {}), extra_logs=[str(x) for x in logs])
    a.remote = remote
    argv = list(sys.argv) if argv is None else list(argv)
    try:
        yield a
    except BaseException as e:
        if not (isinstance(e, SystemExit) and e.code in (0, None)):
            _write(a, "error", f"{type(e).__name__}: {e}", argv)
        raise
    _write(a, "ok", None, argv)


def _write(a: Audited, outcome: str, error: str | None, argv: Sequence[str]) -> None:
    if os.environ.get("MD_AUDIT", "1") == "0" or os.environ.get("RANK", "0") != "0":
        return  # switched off, or a torchrun process other than rank 0 (which logs the job)
    entry = entry_for(a, outcome, error, argv)
    for log in log_paths(a.outputs, a.extra_logs):
        if outcome != "ok" and not log.is_file() and str(log) not in a.extra_logs:
            continue  # a failed run leaves nothing behind: errors go to logs that exist
        try:
            append(log, entry)
            a.logs.append(log)
        except OSError as e:  # a read-only output place must not turn success into failure
            print(f"md: warning: could not append to the audit log {log}: {e}", file=sys.stderr)
    if a.remote is None:
        return
    for out in a.outputs.values():
        if out is not None and not isinstance(out, Mapping) and "://" in str(out):
            try:
                a.remote(str(out), entry)
                a.logs.append(redact(str(out)))
            except Exception as e:
                print(
                    f"md: warning: could not append to the audit log in {redact(str(out))}: "
                    f"{redact(str(e))}",
                    file=sys.stderr,
                )
