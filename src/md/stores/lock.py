"""One writer per store: an advisory lock beside local stores, a lease object beside remote ones.

`md cache-teacher` holds `writer_lock(store)` from before it creates, replaces or resumes a
store until it has written the run attributes. A second writer (another cache, a second
``--overwrite``) is refused in one line that names the holder, instead of mixing two runs'
shards under one provenance. Readers never lock. Dask workers write shards of the
coordinator's run under the coordinator's lock.

- **Local** (a directory store): ``<store>.lock`` beside it, held with ``flock``. The kernel
  drops the lock when the holder dies (SIGKILL included), so a crashed run never blocks the
  next one. The file names the holder (pid, host, command, start) for the refusal message.
  Not reliable on network filesystems without flock (some NFS setups): use one host per store.
- **fsspec / S3** (no locks there): ``<store>.lease``, a JSON object with an owner token,
  pid, host and an expiry ``ttl_s`` ahead, renewed by a heartbeat thread every ``ttl_s / 3``.
  A lease past its expiry belongs to a dead run and is taken over. Taking a lease writes it,
  waits `_SETTLE_S` and reads it back: of two runs that start together, the one whose write
  landed last wins and the other is refused. If the heartbeat finds the lease taken (this run
  stalled past the expiry, e.g. on a dropped link), `WriterLock.check` raises and the run
  stops before writing more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from md.errors import StoreError
from md.stores.backends import parse_location

DEFAULT_TTL_S = 60.0  # lease lifetime without a heartbeat: how long a dead run blocks a store
_SETTLE_S = 0.5  # wait between writing a lease and reading it back (concurrent takers)


def lock_path(url: str) -> str:
    """Where the lock of the store at `url` lives: ``<store>.lock`` / ``<store>.lease``."""
    loc = parse_location(url)
    if loc.kind == "local":
        return str(Path(loc.path).resolve()) + ".lock"
    return loc.url.rstrip("/") + ".lease"


def _holder(owner: str, ttl_s: float) -> dict[str, Any]:
    return {
        "owner": owner,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _command_line()[:300],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "expires": time.time() + ttl_s,
    }


def _command_line() -> str:
    """This process's command line, the program by its file name (``md cache-teacher ...``)."""
    argv = list(sys.argv) or ["?"]
    return " ".join([os.path.basename(argv[0]), *argv[1:]])


def _describe(url: str, holder: dict[str, Any]) -> str:
    return (
        f"{url} is being written by another run (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started', '?')}: "
        f"{holder.get('command', '?')}); wait for it to finish or stop it, then rerun"
    )


class WriterLock:
    """``with WriterLock(url): ...`` holds the store's writer lock (see the module docstring)."""

    def __init__(self, url: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.url = parse_location(url).url
        self.kind = parse_location(url).kind
        self.path = lock_path(url)
        self.ttl_s = ttl_s
        self.owner = uuid.uuid4().hex
        self._fd: int | None = None
        self._fs: Any = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._lost: str | None = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.kind == "local":
            self._acquire_file()
        elif self.kind == "fsspec":
            self._acquire_lease()
        else:  # packed zips are read-only: nothing writes them in place
            raise StoreError(f"{self.url} is a packed store (read-only): unpack it to write")

    def check(self) -> None:
        """Raise if this run lost its lease (another run took the store over)."""
        if self._lost:
            raise StoreError(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._fd is not None:
            with contextlib.suppress(OSError):  # unlink first: a waiter re-checks the inode
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._fs is not None:
            with contextlib.suppress(Exception):
                if self._read_lease().get("owner") == self.owner:
                    self._fs.rm_file(self._lease_key)
            self._fs = None

    # -- local: flock ------------------------------------------------------------------------

    def _acquire_file(self) -> None:
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_json(lambda fd=fd: os.pread(fd, 65536, 0))
                    os.close(fd)
                    raise StoreError(f"{_describe(self.url, holder)} (lock file {path})") from None
                # The holder may have unlinked the file between our open and our flock: then
                # we hold a lock on a dead inode; start over on the path's current file.
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder(self.owner, 0)).encode(), 0)
        except OSError as e:
            raise StoreError(
                f"{path}: cannot create the store's writer lock ({e.strerror}); "
                "make the directory beside the store writable"
            ) from None
        self._fd = fd

    # -- fsspec: a lease with expiry and heartbeat ---------------------------------------------

    @property
    def _lease_key(self) -> str:
        return str(self._fs._strip_protocol(self.path))

    def _read_lease(self) -> dict[str, Any]:
        try:
            return _read_json(lambda: self._fs.cat_file(self._lease_key))
        except FileNotFoundError:
            return {}

    def _write_lease(self) -> None:
        self._fs.pipe_file(self._lease_key, json.dumps(_holder(self.owner, self.ttl_s)).encode())

    def _acquire_lease(self) -> None:
        import fsspec

        self._fs, _ = fsspec.core.url_to_fs(self.path)
        try:
            held = self._read_lease()
            if held and held.get("owner") != self.owner and held.get("expires", 0) > time.time():
                raise StoreError(f"{_describe(self.url, held)} (lease {self.path}, expires in "
                                 f"{held['expires'] - time.time():.0f} s if that run is gone)")  # fmt: skip
            self._write_lease()
            time.sleep(_SETTLE_S)
            now = self._read_lease()
        except StoreError:
            self._fs = None
            raise
        except Exception as e:
            self._fs = None
            raise StoreError(f"{self.path}: cannot take the store's writer lease "
                             f"({type(e).__name__}: {e}); check access to the bucket") from None  # fmt: skip
        if now.get("owner") != self.owner:
            self._fs = None
            raise StoreError(f"{_describe(self.url, now)} (lease {self.path}: taken just now)")
        self._beat = threading.Thread(target=self._heartbeat, name="md-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                held = self._read_lease()
                if held.get("owner") not in (None, self.owner):
                    self._lost = (f"{self.url}: this run lost its writer lease to another run "
                                  f"(pid {held.get('pid')} on {held.get('host')}); stop one "
                                  "of them and rerun")  # fmt: skip
                    return
                self._write_lease()
            except Exception:  # a dropped link: retry at the next beat; the expiry decides
                continue


def _read_json(read: Any) -> dict[str, Any]:
    try:
        value = json.loads(read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def writer_lock(url: str, *, ttl_s: float = DEFAULT_TTL_S) -> WriterLock:
    """The writer lock of the store at `url`, not yet taken (use it as a context manager)."""
    return WriterLock(url, ttl_s=ttl_s)
