"""A local S3-compatible server for tests and benchmarks: moto's S3 app on 127.0.0.1.

`S3Server` serves the WSGI app and request handler that moto's `ThreadedMotoServer` serves,
on a free loopback port, in a thread of this process (tests) or in a child process
(benchmarks: then the server does not share the client's GIL). Around the app sits a small
middleware that counts the HTTP requests and response bytes the server saw, and can add a
fixed latency per request to stand in for a remote object store::

    with S3Server() as server:
        server.create_bucket("md-run")
        os.environ.update(server.env())        # credentials + AWS_ENDPOINT_URL
        ... s3://md-run/store.zarr ...
        server.requests, server.bytes_sent

Nothing here is md code: clients reach the server only through the usual AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...), as they would a real endpoint.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.sharedctypes import Synchronized
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

REGION = "us-east-1"

# moto is a dev extra: tests skip where it (or s3fs) is missing. Imported when a server
# starts, not with this module (moto and flask take seconds to import).
MOTO_MISSING = (
    ""
    if importlib.util.find_spec("moto")
    else "moto[server] is not installed; pip install -e '.[dev]'"
)


class _Counting:
    """WSGI middleware: counts requests and response bytes; optional fixed latency."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        requests: Synchronized[int],
        sent: Synchronized[int],
        latency_s: float,
    ) -> None:
        self.app, self.requests, self.sent, self.latency_s = app, requests, sent, latency_s

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self.latency_s:
            time.sleep(self.latency_s)  # one round trip's worth, before the server answers
        with self.requests.get_lock():
            self.requests.value += 1
        body = list(self.app(environ, start_response))
        with self.sent.get_lock():
            self.sent.value += sum(len(b) for b in body)
        return body


def _make_server(
    requests: Synchronized[int], sent: Synchronized[int], latency_s: float
) -> BaseWSGIServer:
    """Bind moto's app behind the counter to 127.0.0.1 on a free port (not serving yet)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Quiet(MotoRequestHandler):
        def log(self, *args: Any, **kwargs: Any) -> None:  # no line per request on stderr
            pass

    app = _Counting(DomainDispatcherApplication(create_backend_app), requests, sent, latency_s)
    return make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)


def _serve_in_child(
    requests: Synchronized[int], sent: Synchronized[int], latency_s: float, conn: Any
) -> None:
    server = _make_server(requests, sent, latency_s)
    conn.send(server.server_address[1])
    server.serve_forever()  # until the parent terminates this process


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>; `in_process=False` runs it in a child process."""

    def __init__(self, *, latency_s: float = 0.0, in_process: bool = True) -> None:
        if MOTO_MISSING:
            raise RuntimeError(MOTO_MISSING)
        ctx = multiprocessing.get_context("spawn")
        self._requests: Synchronized[int] = ctx.Value("q", 0)  # type: ignore[assignment]
        self._sent: Synchronized[int] = ctx.Value("q", 0)  # type: ignore[assignment]
        self.latency_s = latency_s
        self.in_process = in_process
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._proc: Any = None

    def start(self) -> S3Server:
        if self.in_process:
            self._server = _make_server(self._requests, self._sent, self.latency_s)
            self.port = int(self._server.server_address[1])
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="s3server", daemon=True
            )
            self._thread.start()
        else:
            ctx = multiprocessing.get_context("spawn")
            recv, send = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(
                target=_serve_in_child,
                args=(self._requests, self._sent, self.latency_s, send),
                daemon=True,
            )
            self._proc.start()
            deadline = time.monotonic() + 60
            while not recv.poll(0.05):
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the S3 test server process did not start")
            self.port = int(recv.recv())
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._server.server_close()
            self._server, self._thread = None, None
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(10)
            self._proc = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The settings a client needs: fake credentials, region, this endpoint; no IMDS."""
        return {
            "AWS_ACCESS_KEY_ID": "md-test",
            "AWS_SECRET_ACCESS_KEY": "md-test",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            # Never ask the EC2 metadata service for credentials (a 1-2 s timeout off EC2).
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A plain boto3 S3 client for this server (to set up or inspect buckets)."""
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in `bucket`, sorted."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    @property
    def requests(self) -> int:
        return int(self._requests.value)

    @property
    def bytes_sent(self) -> int:
        return int(self._sent.value)

    def reset_counts(self) -> None:
        with self._requests.get_lock():
            self._requests.value = 0
        with self._sent.get_lock():
            self._sent.value = 0


def s3_missing() -> str:
    """Why the S3 tests cannot run here ('' if they can): moto or s3fs not installed."""
    if MOTO_MISSING:
        return MOTO_MISSING
    if importlib.util.find_spec("s3fs") is None:
        return "s3fs is not installed; pip install -e '.[dev]'"
    return ""


def drop_s3_clients() -> None:
    """Close and forget fsspec's cached S3 clients, so the next store opened resolves
    credentials and endpoint again (for tests that change them; md itself never needs this)."""
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if creator is not None:  # opened on zarr's loop: close it there
            sync(creator.__aexit__(None, None, None))
    s3fs.S3FileSystem.clear_instance_cache()


# -- pytest fixtures (imported by the conftest.py of the folders with S3 tests) -----------------

try:
    import pytest
except ImportError:  # pragma: no cover - benchmarks run without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def s3_server() -> Iterator[S3Server]:
        """moto's S3 on 127.0.0.1 for the whole session; skips if moto or s3fs is missing."""
        reason = s3_missing()
        if reason:
            pytest.skip(reason)
        with S3Server() as server:
            yield server

    @pytest.fixture
    def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
        """Credentials and endpoint of the test server in the environment, as a user sets
        them; a developer's own AWS profile and config files are kept out."""
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        for key, value in s3_server.env().items():
            monkeypatch.setenv(key, value)
        return s3_server

    @pytest.fixture
    def s3_bucket(s3_env: S3Server) -> str:
        """A fresh, empty bucket on the test server."""
        return s3_env.create_bucket(f"md-{uuid.uuid4().hex[:16]}")
