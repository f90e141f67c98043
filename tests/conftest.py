"""Shared fixtures: tiny synthetic datasets (made once per session) and the real data path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from md.cli import main

# The S3 server fixtures are defined once, here, for the whole session: two definitions (one per
# test folder) started two servers, and fsspec's cached S3 client, which does not notice a
# changed AWS_ENDPOINT_URL, kept talking to the first one.
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: two OpenMP threads thrash on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(*args: str, expect: int = 0) -> str:
    """Invoke `md ARGS...` in-process; assert the exit code; return stdout + stderr."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    out = result.output  # click >= 8.2: stdout and stderr interleaved
    assert result.exit_code == expect, out
    return out


@pytest.fixture(scope="session")
def synth_det(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny KAIST-layout synthetic detection set (8 train, 4 test, 96x80)."""
    out = tmp_path_factory.mktemp("synth") / "det"
    run_cli(
        "data",
        "synth",
        "--task",
        "detection",
        "--out",
        str(out),
        "--n-train",
        "8",
        "--n-test",
        "4",
        "--size",
        "96x80",
        "--seed",
        "0",
    )
    return out


@pytest.fixture(scope="session")
def tiny_det_teacher(synth_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu-tiny detection teacher (2 iterations) on synth_det, trained once per session
    for every folder that only needs some teacher (student training, S3)."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    with one_torch_thread():
        run_cli(
            "train-teacher",
            "--data",
            str(synth_det),
            "--out",
            str(out),
            "--task",
            "detection",
            "--preset",
            "cpu-tiny",
            "batch_size=2",
            "iterations=2",
            "progress=false",
        )
    return out


@pytest.fixture(scope="session")
def synth_seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MFNet-layout synthetic segmentation set (8 train, 4 test, 96x64)."""
    out = tmp_path_factory.mktemp("synth") / "seg"
    run_cli(
        "data",
        "synth",
        "--task",
        "segmentation",
        "--out",
        str(out),
        "--n-train",
        "8",
        "--n-test",
        "4",
        "--size",
        "96x64",
        "--seed",
        "0",
    )
    return out
