"""`md cache-teacher` on Dask: same bytes as a single process, lost workers, resuming, errors.

The reference is a single-process run of the tiny detection teacher over the 8 training
samples in 4 shards of 2; every Dask run must store exactly its bytes (workers run torch on
one thread, as the reference does here, so the arrays are byte-identical, not just close).
Most tests share one local cluster of 2 worker processes (`--scheduler`), since starting one
costs seconds; one test starts its own through ``--workers 2``, as a user would.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster, WorkerPlugin

from md.data import open_dataset
from md.stores import open_store, verify
from md.teacher_cache import CacheConfig, run
from md.teacher_cache.cluster import NO_DASHBOARD, parse_resources, shard_task_key
from tests.conftest import one_torch_thread, run_cli

SHARDS = ["--shard-size", "2", "--batch-size", "2"]  # 8 samples -> 4 shards of 2
SLOT = "SLOT"  # a resource the shared cluster's workers offer, to test --resources


def cache(teacher: Path, data: Path, store: Path, *extra: str, expect: int = 0) -> str:
    return run_cli(
        "cache-teacher", "--teacher", str(teacher), "--data", str(data), "--store", str(store),
        *SHARDS, *extra, "progress=false", expect=expect,
    )  # fmt: skip


def summary_of(teacher: Path, data: Path, store: Path, **fields: Any) -> dict[str, Any]:
    cfg = CacheConfig(
        teacher=str(teacher), data=str(data), store=str(store), shard_size=2, batch_size=2,
        progress=False, **fields,
    )  # fmt: skip
    return run(cfg)


def raw_arrays(url: Path) -> dict[str, np.ndarray]:
    ts = open_store(url)
    return {name: np.asarray(ts.raw_array(name)[:]) for name in ts.raw_names()}


def assert_same_store(got: Path, want: Path) -> None:
    """Same stored arrays, bit for bit, and `md store verify` passes."""
    a, b = raw_arrays(got), raw_arrays(want)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert verify(got).ok
    assert "ok" in run_cli("store", "verify", str(got))


@pytest.fixture(scope="module")
def reference(det_teacher: Path, synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("dask") / "single.zarr"
    with one_torch_thread():  # as on the workers (module fixtures run outside the autouse one)
        cache(det_teacher, synth_det, store)
    return store


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """2 worker processes, 1 thread each, offering SLOT=1; shared by the module's tests."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, **NO_DASHBOARD, resources={SLOT: 1},
    ) as lc:  # fmt: skip
        with Client(lc) as client:  # import torch and md on the workers now, in parallel
            client.run(importlib.import_module, "md.teacher_cache.cluster")
        yield lc


@pytest.fixture
def address(cluster: LocalCluster) -> Iterator[str]:
    """The shared cluster's scheduler, once both workers are up (a test may have killed one)."""
    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
    yield cluster.scheduler_address


def test_local_cluster_of_two_processes_matches_single_process(
    det_teacher, synth_det, reference, tmp_path
):
    store = tmp_path / "w2.zarr"
    out = cache(det_teacher, synth_det, store, "--workers", "2")
    assert "wrote 4 shards" in out and "Dask workers" in out
    assert_same_store(store, reference)
    last = open_store(store).attrs["last_run"]
    assert last["dask"]["workers"] == 2 and last["shards_written"] == 4


def test_scheduler_of_a_running_cluster(det_teacher, synth_det, reference, address, tmp_path):
    store = tmp_path / "s.zarr"
    s = summary_of(det_teacher, synth_det, store, scheduler=address, resources=f"{SLOT}=1")
    assert s["complete"] and s["shards_written"] == 4 and s["samples_written"] == 8
    assert s["dask"]["scheduler"] == address and s["device"] == "cpu"
    assert_same_store(store, reference)
    # A rerun finds every shard written: nothing is submitted, no cluster is needed.
    again = summary_of(det_teacher, synth_det, store, scheduler="tcp://127.0.0.1:9")
    assert again["shards_written"] == 0 and again["shards_skipped"] == 4


@pytest.mark.parametrize("first_run", ["dask", "single-process"])
def test_rerun_after_an_interrupted_run_computes_only_the_missing_shards(
    det_teacher, synth_det, reference, address, tmp_path, first_run
):
    store = tmp_path / "cut.zarr"
    on = ["--scheduler", address] if first_run == "dask" else []
    out = cache(det_teacher, synth_det, store, *on, "stop_after_shards=2")
    assert "stopped with shards" in out
    first = open_store(store)
    done = [k for k in range(4) if k not in first.missing_shards()]
    assert len(done) == 2
    chunk_files = sorted((store / "features" / "c3" / "c").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in chunk_files if p.is_file()}
    s = summary_of(det_teacher, synth_det, store, scheduler=address)
    assert s["shards_written"] == 2 and s["shards_skipped"] == 2 and s["complete"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished shards untouched
    assert_same_store(store, reference)


class KillOnShard(WorkerPlugin):
    """SIGKILLs its worker process (as the OOM killer would) the first time shard `shard`'s
    task reaches `state` there: ``executing`` (lost before anything is written) or
    ``memory`` (shard written, result not yet reported). The marker file makes it once."""

    def __init__(self, shard: int, state: str, marker: Path) -> None:
        self.shard, self.state, self.marker = shard, state, str(marker)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != self.state or not str(key).endswith(f"-shard-{self.shard}"):
            return
        try:
            Path(self.marker).touch(exist_ok=False)
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def test_lost_workers_shards_are_recomputed_once(
    det_teacher, synth_det, reference, address, tmp_path
):
    store = tmp_path / "lost.zarr"
    kills = {"kill-executing": KillOnShard(1, "executing", tmp_path / "killed1"),
             "kill-memory": KillOnShard(2, "memory", tmp_path / "killed2")}  # fmt: skip
    with Client(address) as client:
        for name, plugin in kills.items():
            client.register_plugin(plugin, name=name)
        try:
            s = summary_of(det_teacher, synth_det, store, scheduler=address)
        finally:  # the markers make the plugins inert; unregister once the restarts are done
            client.wait_for_workers(2, timeout=60)
            for name in kills:
                with contextlib.suppress(OSError):  # a worker still starting
                    client.unregister_worker_plugin(name)
    assert (tmp_path / "killed1").exists() and (tmp_path / "killed2").exists()
    assert s["complete"] and s["shards_written"] == 4 and s["samples_written"] == 8
    # Shard 2's rerun found it written (by the killed attempt) and wrote nothing.
    assert s["dask"]["shards_found_written"] == 1
    assert_same_store(store, reference)  # nothing lost, nothing written twice differently


def test_bad_data_in_a_task_is_the_single_process_one_line_error(
    det_teacher, synth_det, address, tmp_path
):
    data = tmp_path / "broken"
    shutil.copytree(synth_det, data)
    thermal = open_dataset(data, split="train").samples[5].thermal_path
    thermal.write_bytes(thermal.read_bytes()[:200])  # header intact, pixels cut off
    single = cache(det_teacher, data, tmp_path / "a.zarr", expect=2)
    dask = cache(det_teacher, data, tmp_path / "b.zarr", "--scheduler", address, expect=2)
    line = [ln for ln in single.splitlines() if ln.startswith("md: error:")]
    assert len(line) == 1 and line[0] in dask.splitlines()
    assert "Traceback" not in dask


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scheduler", "tcp://127.0.0.1:9", "dask_timeout_s=1"], "cannot reach the Dask"),
        (["--scheduler", "no-such-scheme://x", "dask_timeout_s=1"], "cannot reach the Dask"),
        (["--scheduler", "tcp://127.0.0.1:9", "--workers", "2"], "not both"),
        (["--resources", "GPU=1"], "only applies to Dask runs"),
        (["--workers", "2", "--resources", "GPU"], "NAME=AMOUNT"),
        (["--workers", "2", "--num-workers", "2"], "cannot run inside Dask workers"),
    ],
)
def test_bad_dask_options_are_one_line_errors(det_teacher, synth_det, tmp_path, extra, message):
    out = cache(det_teacher, synth_det, tmp_path / "x.zarr", *extra, expect=2)
    errors = [ln for ln in out.splitlines() if ln.startswith("md: error:")]
    assert len(errors) == 1 and message in errors[0], out
    assert "Traceback" not in out


def test_resources_no_worker_offers_are_refused(det_teacher, synth_det, address, tmp_path):
    out = cache(det_teacher, synth_det, tmp_path / "g.zarr", "--scheduler", address,
                "--resources", "GPU=1", expect=2)  # fmt: skip
    assert "offers resources GPU=1" in out and "--resources GPU=1" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the workers here have a GPU")
def test_cuda_device_on_cpu_workers_is_a_one_line_error(det_teacher, synth_det, address, tmp_path):
    out = cache(det_teacher, synth_det, tmp_path / "c.zarr", "--scheduler", address,
                "--device", "cuda", expect=2)  # fmt: skip
    assert "md: error: --device cuda: no CUDA device on Dask worker" in out


def test_resource_parsing_and_task_keys():
    assert parse_resources("GPU=1, MEM=4e9") == {"GPU": 1.0, "MEM": 4e9}
    assert parse_resources("") == {}
    assert shard_task_key("abc", 3).endswith("-shard-3")
