"""Dask scale-out of `md cache-teacher`: one task per shard on a cluster of worker processes.

The coordinator (the `md cache-teacher` process, `md.teacher_cache.run`) creates or validates
the store exactly as a single-process run does, then `cache_on_dask` submits one task per
unwritten shard, collects the results with a progress bar, and hands back the counts; `run`
writes the run attributes last and re-checks that the store is complete.

Each task is `cache_shard_task(job, k)`, which calls ``cache_shards(teacher, ds, store, [k])``:
a task owns its shard whole, so no two writers ever share one (the store's invariant), and a
shard's bytes do not depend on which worker computed it or with which other shards.

Worker-local state (`_worker_cached`): a Dask worker runs many tasks in one process, so the
teacher is loaded once per worker (keyed on path, file sha256, file stat and device; a replaced
checkpoint is noticed by its stat and re-hashed) and kept across runs; the dataset and the
store handle ('r+', opened in the worker, never pickled open) are kept for one run (keyed on
the run's token), so a store recreated with ``overwrite`` is never seen through a stale handle.
A per-process lock runs one task at a time: tasks of a worker with several threads would
otherwise share the teacher and one store handle, which is single-writer.

Failure semantics:

- A worker lost mid-run (killed, out of memory, machine gone): the scheduler reschedules its
  tasks on other workers (up to ``distributed.scheduler.allowed-failures`` lost workers per
  task, then `KilledWorker`, reported here in one line). A rescheduled task whose shard was
  written by the lost attempt (the worker died after ``written`` was set, before it reported)
  finds ``written`` set and writes nothing: no shard is computed into the store twice.
- An md error in a task (bad data, store refused) is returned as a value, not raised, so Dask
  does not retry a deterministic failure, and `cache_on_dask` raises it: the CLI prints the
  same one-line ``md: error: ...`` as a single-process run. Other exceptions are retried
  `RETRIES` times (a flaky filesystem), then raised.
- Interrupt or error in the coordinator: pending tasks are cancelled; shards already written
  stay written, so rerunning the command resumes from ``written``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from md.data import PairedDataset, open_dataset
from md.errors import ConfigError, MdError
from md.models.checkpoint import file_sha256
from md.stores import TargetStore
from md.stores.backends import parse_location
from md.teacher_cache.loading import load_teacher
from md.teacher_cache.shards import ShardOptions, ShardStats, cache_shards
from md.teacher_cache.writer import shard_stored_bytes
from md.train.recipe import resolve_device

RETRIES = 2  # reruns of a task after an unexpected exception (not md errors, not lost workers)
ALLOWED_FAILURES = 3  # lost workers a task may take down before it is given up (local clusters)
POLL_S = 1.0  # how often the coordinator checks the cluster while no task finishes
# LocalCluster options: no dashboard. Its scheduler serves HTTP anyway, by default on port 8787,
# which another cluster may hold (then Dask warns and picks another): ask for a free port.
NO_DASHBOARD: dict[str, Any] = {"dashboard_address": ":0", "scheduler_kwargs": {"dashboard": False}}
# Preload script of local workers. Ctrl-C in a terminal reaches the whole process group; the
# workers ignore it and the coordinator, interrupted, cancels the tasks and closes them.
_IGNORE_SIGINT = """
import signal, threading
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
"""


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs besides its shard index; small, sent with every task.

    Paths are absolute: workers resolve them, not the coordinator's working directory, so a
    remote worker needs the same paths (a shared filesystem) or an fsspec store URL.
    """

    token: str  # this run's id: task keys and the per-run worker cache
    teacher: str  # teacher checkpoint path
    teacher_sha256: str  # the coordinator's hash: a worker refuses a different file
    data: str  # dataset root
    split: str
    ids_sha256: str  # hash of the split's sample ids in order: store sample i = item i
    store: str  # store URL (absolute path for local stores)
    device: str  # resolved on the worker (auto: that worker's CUDA if it has one)
    opts: ShardOptions  # how a shard is computed (num_workers 0, no stop_after_shards)


@dataclass(frozen=True)
class ShardResult:
    """What one task did: its shard is written, by this attempt or by a lost earlier one."""

    shard: int
    samples: int
    bytes: int  # stored bytes of the shard (all arrays)
    forward_seconds: float  # teacher forward of this attempt (0 if found written)
    device: str  # where the teacher ran
    worker: str  # host:pid of the worker process
    found_written: bool  # an earlier attempt wrote it (its worker died before reporting)


@dataclass
class DaskRun:
    """What `cache_on_dask` did, for the run summary."""

    shards: list[int]  # the shards submitted, one task each
    stats: ShardStats
    seconds: float  # first submit -> last result (excludes starting/connecting the cluster)
    startup_seconds: float  # starting the local cluster or connecting to the scheduler
    scheduler: str
    workers: int  # workers when the tasks were submitted
    devices: list[str] = field(default_factory=list)
    workers_used: int = 0  # distinct worker processes that finished a shard
    shards_found_written: int = 0  # tasks rerun after a lost worker that found their shard done

    def to_json(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "workers": self.workers,
            "workers_used": self.workers_used,
            "startup_seconds": round(self.startup_seconds, 3),
            "shards_found_written": self.shards_found_written,
        }


def shard_task_key(token: str, k: int) -> str:
    """The Dask key of shard k's task in run `token` (unique per run: reruns never collide)."""
    return f"md-cache-teacher-{token}-shard-{k}"


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=1"`` or ``"GPU=1,MEM=4e9"`` (commas or spaces) -> ``{"GPU": 1.0, ...}``."""
    out: dict[str, float] = {}
    for item in filter(None, re.split(r"[,\s]+", text.strip())):
        name, eq, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not eq or not name or amount <= 0:
            raise ConfigError(
                f"--resources {text!r}: expected NAME=AMOUNT[,NAME=AMOUNT], e.g. GPU=1"
            )
        out[name] = amount
    return out


def ids_sha256(ids: Sequence[str]) -> str:
    """Hash of the sample ids in order: a worker whose split lists other samples is refused."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def make_job(
    teacher: str, teacher_sha256: str, data: str, split: str, ds: PairedDataset,
    store: TargetStore, device: str, opts: ShardOptions,
) -> ShardJob:  # fmt: skip
    """The job of one run; paths made absolute, options made per-shard."""
    loc = parse_location(store.url)
    url = str(Path(loc.path).resolve()) if loc.kind == "local" else store.url
    return ShardJob(
        token=uuid.uuid4().hex[:12],
        teacher=str(Path(teacher).resolve()),
        teacher_sha256=teacher_sha256,
        data=str(Path(data).resolve()),
        split=split,
        ids_sha256=ids_sha256([s.id for s in ds.samples]),
        store=url,
        device=device,
        # DataLoader processes cannot start inside a (daemonic) Dask worker; one shard a task.
        opts=dataclasses.replace(opts, num_workers=0, stop_after_shards=0),
    )


# ----------------------------------------------------------------------------- coordinator


def cache_on_dask(
    job: ShardJob,
    shards: Sequence[int],
    *,
    scheduler: str = "",
    workers: int = 0,
    resources: str = "",
    timeout_s: float = 30.0,
    on_start: Callable[[], None] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> DaskRun:
    """Run `job` over `shards` on a Dask cluster: the one at `scheduler`, or a local cluster
    of `workers` processes (1 thread each) started here and closed after. `resources` (e.g.
    ``"GPU=1"``) is what every task needs. For a progress bar: `on_start()` once the tasks
    are submitted (the cluster is up), `on_shard(samples, bytes)` per finished shard,
    `on_done()` after the last one (before a local cluster is closed)."""
    need = parse_resources(resources)
    t0 = time.perf_counter()
    with _client(scheduler, workers, need, timeout_s) as client:
        n_workers = _wait_for_workers(client, need, timeout_s)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        futures = {
            client.submit(
                cache_shard_task, job, k, key=shard_task_key(job.token, k),
                resources=need or None, retries=RETRIES, pure=False,
            ): k
            for k in shards
        }  # fmt: skip
        if on_start is not None:
            on_start()
        try:
            results = _collect(client, futures, need, timeout_s, on_shard)
        except BaseException:  # an md error, a lost cluster, Ctrl-C: stop what has not started
            client.cancel(list(futures))
            raise
        seconds = time.perf_counter() - t1
        if on_done is not None:
            on_done()
        address = str(client.scheduler.address) if client.scheduler else scheduler
    return _dask_run(list(shards), results, seconds, startup, address, n_workers)


@contextlib.contextmanager
def _client(
    scheduler: str, workers: int, resources: dict[str, float], timeout_s: float
) -> Iterator[Any]:
    """A client of the cluster at `scheduler`, or of a local cluster of `workers` processes."""
    import dask
    from distributed import Client, LocalCluster

    if workers:
        # Local workers offer the resources the tasks need, else the tasks would never start.
        # Their logs are kept to errors: a user of --workers sees md's lines, not Dask's notes
        # about tasks cancelled at shutdown or workers restarted (their shards are recomputed).
        with (
            dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                **NO_DASHBOARD, resources=resources or None, silence_logs=logging.ERROR,
                preload=[_IGNORE_SIGINT],
            ) as cluster,
            Client(cluster) as client,
        ):  # fmt: skip
            yield client
        return
    try:
        client = Client(scheduler, timeout=timeout_s)
    except (OSError, ValueError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MdError(
            f"cannot reach the Dask scheduler at {scheduler!r} ({reason}); check the address "
            "(tcp://HOST:8786) and that `dask scheduler` is running, or use --workers N"
        ) from None
    with client:
        yield client


def _wait_for_workers(client: Any, need: dict[str, float], timeout_s: float) -> int:
    """Workers of the cluster (>= 1), refusing a cluster where no worker offers `need`."""
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise MdError(
            f"no Dask worker joined {address} within {timeout_s:g} s; start workers with "
            f"`dask worker {address} --nthreads 1` (or raise dask_timeout_s)"
        ) from None
    workers = client.scheduler_info()["workers"]
    if need and not any(_offers(w, need) for w in workers.values()):
        wanted = ",".join(f"{k}={v:g}" for k, v in need.items())
        raise MdError(
            f"none of the {len(workers)} Dask workers of {address} offers resources {wanted}; "
            f"start workers with `dask worker {address} --resources {wanted.replace(',', ' ')}`"
            " or drop --resources"
        )
    return len(workers)


def _offers(worker: dict[str, Any], need: dict[str, float]) -> bool:
    have = worker.get("resources") or {}
    return all(have.get(name, 0) >= amount for name, amount in need.items())


def _collect(
    client: Any,
    futures: dict[Any, int],
    need: dict[str, float],
    timeout_s: float,
    on_shard: Callable[[int, int], None] | None,
) -> list[ShardResult]:
    """Results as tasks finish; the first md error is raised. While nothing finishes, the
    cluster is checked: no worker able to run the tasks for `timeout_s` is an error."""
    from distributed import wait

    pending, results = set(futures), []
    idle_since: float | None = None
    while pending:
        try:
            done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            idle_since = _check_cluster(client, need, timeout_s, idle_since)
            continue
        idle_since = None
        for fut in done:
            result = _result(fut, futures[fut])
            results.append(result)
            if on_shard is not None:
                on_shard(result.samples, result.bytes)
    return results


def _check_cluster(
    client: Any, need: dict[str, float], timeout_s: float, idle_since: float | None
) -> float | None:
    """Raise if no worker that can run the tasks has been there for `timeout_s`."""
    workers = client.scheduler_info()["workers"].values()
    if any(_offers(w, need) for w in workers):
        return None
    now = time.perf_counter()
    if idle_since is None:
        return now
    if now - idle_since > timeout_s:
        raise MdError(
            f"every Dask worker of {client.scheduler.address} able to run the shard tasks is "
            f"gone (none for {timeout_s:g} s); finished shards are kept: start workers and "
            "rerun the same command to resume"
        )
    return idle_since


def _result(fut: Any, k: int) -> ShardResult:
    """A task's result; md errors (returned by the task) and lost workers raised as MdError."""
    from distributed import CancelledError, KilledWorker

    try:
        out = fut.result()
    except KilledWorker:
        raise MdError(
            f"shard {k}: the Dask workers that ran it kept dying (distributed.scheduler."
            "allowed-failures reached: out of memory, or a crash in the teacher?); see the "
            "worker logs; finished shards are kept, rerun the same command to resume"
        ) from None
    except CancelledError:
        raise MdError(
            f"shard {k}: its Dask task was cancelled (the scheduler was lost or restarted); "
            "finished shards are kept, rerun the same command to resume"
        ) from None
    if isinstance(out, MdError):
        raise out
    assert isinstance(out, ShardResult)
    return out


def _dask_run(
    shards: list[int],
    results: list[ShardResult],
    seconds: float,
    startup: float,
    address: str,
    workers: int,
) -> DaskRun:
    stats = ShardStats(
        shards=len(results),
        samples=sum(r.samples for r in results),
        bytes=sum(r.bytes for r in results),
        forward_seconds=sum(r.forward_seconds for r in results),
    )
    return DaskRun(
        shards=shards,
        stats=stats,
        seconds=seconds,
        startup_seconds=startup,
        scheduler=address,
        workers=workers,
        devices=sorted({r.device for r in results}),
        workers_used=len({r.worker for r in results}),
        shards_found_written=sum(r.found_written for r in results),
    )


# ----------------------------------------------------------------------------- worker side

_LOCK = threading.Lock()  # one shard task at a time per worker process
_CACHE: dict[str, tuple[Hashable, Any]] = {}  # kind -> (key, value): the latest of each kind


def cache_shard_task(job: ShardJob, k: int) -> ShardResult | MdError:
    """The Dask task: write shard k whole (unless already written). md errors are returned,
    not raised, so Dask does not retry them; the coordinator raises them."""
    try:
        with _LOCK:
            return _cache_one(job, k)
    except MdError as e:
        return e


def _cache_one(job: ShardJob, k: int) -> ShardResult:
    store = _worker_cached("store", (job.store, job.token), lambda: _open_store(job))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if job.device.startswith("cuda") and not torch.cuda.is_available():
        raise MdError(
            f"--device {job.device}: no CUDA device {_where()}; start GPU workers "
            "(CUDA_VISIBLE_DEVICES, --resources GPU=1) or use --device cpu"
        )
    device = resolve_device(job.device)
    if store.is_shard_written(k):  # written by an attempt whose worker died before reporting
        samples = len(store.shard_range(k))
        return ShardResult(k, samples, shard_stored_bytes(store, k), 0.0, str(device), worker,
                           found_written=True)  # fmt: skip
    teacher = _worker_teacher(job, device)
    ds = _worker_cached("dataset", (job.data, job.split, job.token), lambda: _open_data(job))
    stats = cache_shards(teacher, ds, store, [k], job.opts)
    return ShardResult(k, stats.samples, stats.bytes, stats.forward_seconds, str(device), worker,
                       found_written=False)  # fmt: skip


def _worker_cached(kind: str, key: Hashable, make: Callable[[], Any]) -> Any:
    """This process's value of `kind` for `key`, made once; a new key replaces the old value
    (freed first: one teacher in GPU memory at a time)."""
    hit = _CACHE.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:
        del _CACHE[kind]
        if isinstance(hit[1], TargetStore):
            hit[1].close()
        del hit
    value = make()
    _CACHE[kind] = (key, value)
    return value


def _where() -> str:
    return f"on Dask worker {socket.gethostname()} (pid {os.getpid()})"


def _worker_teacher(job: ShardJob, device: torch.device) -> torch.nn.Module:
    path = Path(job.teacher)
    try:
        st = path.stat()
    except OSError:
        raise MdError(
            f"{path}: teacher checkpoint not found {_where()}; workers need the same paths as "
            "the md cache-teacher process (a shared filesystem)"
        ) from None

    def load() -> torch.nn.Module:
        if file_sha256(path) != job.teacher_sha256:
            raise MdError(
                f"{path}: this file {_where()} differs from the teacher the store was created "
                "with (sha256); give every worker the same checkpoint"
            )
        teacher, _ = load_teacher(path)
        return teacher.to(device)

    key = (job.teacher, job.teacher_sha256, str(device), st.st_mtime_ns, st.st_size)
    teacher: torch.nn.Module = _worker_cached("teacher", key, load)
    return teacher


def _open_data(job: ShardJob) -> PairedDataset:
    ds = open_dataset(job.data, split=job.split)
    if ids_sha256([s.id for s in ds.samples]) != job.ids_sha256:
        raise MdError(
            f"{job.data}: split {job.split!r} lists other samples {_where()} than for the "
            "coordinator; workers need the same dataset (a shared filesystem)"
        )
    return ds


def _open_store(job: ShardJob) -> TargetStore:
    loc = parse_location(job.store)
    if loc.kind == "local" and not (Path(loc.path) / "zarr.json").is_file():
        raise MdError(
            f"{job.store}: store not found {_where()}; workers need the same paths as the "
            "md cache-teacher process (a shared filesystem), or use an fsspec URL (s3://...)"
        )
    store = TargetStore(job.store, mode="r+")
    _ = store.schema  # open now: a clear error here, not inside the shard loop
    return store
