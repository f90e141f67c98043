"""`md bench ...` in tiny configurations: each command emits valid JSON with its keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from md.bench.setup import BenchInputs, ensure_setup
from md.stores import PRESETS, open_store
from tests.conftest import REPO, run_cli


def _json(out: str) -> dict:
    """The JSON object of the output (progress lines on stderr may come first)."""
    return json.loads(out[out.index("{") :])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> BenchInputs:
    """A tiny synthetic set-up: 96x64 data, cpu-tiny teacher, lossless train store."""
    return ensure_setup(tmp_path_factory.mktemp("bench"), n_train=8, n_test=4)


def _given(s: BenchInputs) -> list[str]:
    return ["--data", s.data, "--teacher", s.teacher, "--store", s.store, "--threads", "1"]


def test_codecs_reports_each_preset(inputs: BenchInputs) -> None:
    r = _json(
        run_cli("bench", "codecs", *_given(inputs), "--samples", "4", "--repeats", "1", "--json")
    )
    assert set(r["presets"]) == set(PRESETS)
    for p in r["presets"].values():
        assert {
            "bytes_per_sample",
            "ratio_vs_fp32",
            "cosine",
            "max_abs_error",
            "encode_mb_s",
            "decode_mb_s",
        } <= set(p)
        assert p["ratio_vs_fp32"] > 1 and 0.99 < p["cosine"] <= 1.0 + 1e-9
    assert (
        r["presets"]["compact"]["bytes_per_sample"] < r["presets"]["lossless"]["bytes_per_sample"]
    )
    assert r["inputs"]["synthetic"] is False


def test_latency_of_the_models() -> None:
    r = _json(
        run_cli(
            "bench",
            "latency",
            "--size",
            "64x64",
            "--width",
            "0.125",
            "--head-channels",
            "16",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--json",
        )
    )
    assert set(r["models"]) == {
        "teacher",
        "md_student",
        "md_student_folded_stem",
        "visible_only_student",
    }
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["image_size"] == [64, 64]
    assert all(m["median_ms"] > 0 for m in r["models"].values())


def test_train_step_three_modes(inputs: BenchInputs) -> None:
    r = _json(
        run_cli(
            "bench",
            "train-step",
            *_given(inputs),
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
        )
    )
    assert all(r[k] > 0 for k in ("offline_ms", "online_ms", "in_memory_ms"))
    assert set(r["peak_memory_mb"]) == {"offline", "online", "in_memory"}
    # on CPU (Linux) the peak is the sampled process RSS: positive, and at least the RSS
    # the process had before the mode began
    for mode in r["modes"].values():
        assert mode["peak_memory_kind"] == "process_rss"
        assert mode["peak_memory_mb"] == mode["peak_rss_mb"] > 0 and mode["rss_rise_mb"] >= 0
    # resolved from the store's teacher, never null
    assert r["width"] == open_store(inputs.store).attrs["teacher"]["model_args"]["width"]


def test_loader_rates_per_worker_count(inputs: BenchInputs) -> None:
    r = _json(
        run_cli(
            "bench",
            "loader",
            *_given(inputs),
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--batches",
            "2",
            "--step-samples-per-s",
            "50",
            "--json",
        )
    )
    assert set(r["loader_samples_per_s"]) == {"0"} and r["mode"] == "offline"
    assert r["step_samples_per_s"] == 50 and not r["step_measured"]
    per_core = r["loader_samples_per_s_per_core"]["0"]
    assert r["workers_to_feed"] == -(-50 // per_core)  # ceil(step / per-core rate)
    read = r["read"]
    assert read["codec"] == "lossless" and read["batch"] == 2
    assert read["per_sample"]["decoded_mb"] < read["per_sample"]["float32_mb"]  # fp16 + uint8
    assert read["fraction_of_bound"] > 0 and read["samples_per_s"]["bound"] > 0
    assert {"fetch", "crc32c", "zstd", "stack", "float32", "images"} <= set(read["breakdown_ms"])
    assert r["peak_rss_mb"] > 0


def test_loader_against_the_measured_step(inputs: BenchInputs) -> None:
    r = _json(
        run_cli(
            "bench", "loader", *_given(inputs), "--batch-size", "2", "--batches", "1",
            "--measure-step", "--steps", "1", "--json",
        )
    )  # fmt: skip
    assert r["step_measured"] and r["step_samples_per_s"] > 0 and set(r["fed"]) == {"0"}


def test_cache_against_forward(inputs: BenchInputs) -> None:
    r = _json(run_cli("bench", "cache", *_given(inputs), "--repeats", "1", "--json"))
    assert r["forward_samples_per_s"] > 0
    assert set(r["cache"]) == {"lossless", "compact"}
    assert all(c["samples_per_s"] > 0 and c["cache_vs_forward"] > 0 for c in r["cache"].values())


def test_standalone_builds_a_synthetic_setup() -> None:
    """No --data/--teacher: a tiny set-up is built in a temporary folder and labelled so."""
    r = _json(run_cli("bench", "codecs", "--samples", "4", "--repeats", "1", "--threads", "1"))
    assert r["inputs"]["synthetic"] is True
    assert not Path(r["inputs"]["data"]).exists()  # the temporary folder is gone


def test_store_without_data_is_a_user_error(inputs: BenchInputs) -> None:
    out = run_cli("bench", "cache", "--teacher", inputs.teacher, expect=2)
    assert "--data" in out


@pytest.mark.parametrize("script", ["codecs.py", "loader.py"])
def test_bench_scripts_still_run(
    inputs: BenchInputs,
    script: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runpy

    args = (
        ["--teacher", inputs.teacher, "--data", inputs.data, "--samples", "4"]
        if script == "codecs.py"
        else [
            "--store",
            inputs.store,
            "--data",
            inputs.data,
            "--workers",
            "0",
            "--batches",
            "2",
            "--steps",
            "1",
            "batch_size=2",
        ]
    )
    monkeypatch.setattr(sys, "argv", [script, *args, "--json"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "bench" / script), run_name="__main__")
    assert exit_.value.code == 0
    json.loads(capsys.readouterr().out)


def test_cache_steps_script_times_every_variant(
    inputs: BenchInputs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    before = sys.getswitchinterval()
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "cache_steps.py",
            "--teacher",
            inputs.teacher,
            "--data",
            inputs.data,
            "--repeats",
            "1",
            "--threads",
            "0",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "bench" / "cache_steps.py"), run_name="__main__")
    assert exit_.value.code == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["variants"]) == {
        "zarr_path",
        "one_pass",
        "read_ahead",
        "short_switch",
        "short_switch/compact",
        "short_switch/thread_writer",
    }
    assert all(v["samples_per_s"] > 0 and v["vs_forward"] > 0 for v in r["variants"].values())
    assert r["variants"]["zarr_path"]["one_pass"] is False
    assert sys.getswitchinterval() == before  # left as it was


def test_fusion_latency_script_subset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    names = "visible-only,image-level,image-level (folded stem)"
    monkeypatch.setattr(
        sys, "argv", ["fusion_latency.py", "detection", "0.125", "16", "32", "48", "2", names]
    )
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "bench" / "fusion_latency.py"), run_name="__main__")
    assert exit_.value.code == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["median_ms"]) == set(names.split(","))
    assert all(ms > 0 for ms in r["median_ms"].values())
