"""`md train-student` end to end on a tiny synthetic set and stores from `md cache-teacher`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from md.models.checkpoint import file_sha256, load_checkpoint
from md.stores import open_store
from md.train.metrics_log import read_log
from tests.conftest import run_cli
from tests.student_train.caching import cache

TINY = ["--preset", "cpu-tiny", "batch_size=2", "progress=false"]


def _train(out: Path, *args: str, expect: int = 0) -> str:
    return run_cli("train-student", "--out", str(out), *TINY, *args, expect=expect)


def _losses(path: Path) -> list[dict]:
    return [r for r in read_log(path) if r.get("kind", "train") == "train"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["weights"], load_checkpoint(b)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_offline_training_never_needs_the_teacher(det_teacher, synth_det, tmp_path):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(det_teacher, teacher)
    sha = file_sha256(teacher)
    store = cache(
        teacher, synth_det, tmp_path / "s.zarr", "--bundle-inputs", "--thermal-factor", "16"
    )
    teacher.unlink()  # offline mode must not load it
    out = tmp_path / "student.pt"
    _train(out, "--store", str(store), "iterations=3", "log_every=1", "flip=false")
    ck = load_checkpoint(out, task="detection", model_kind="student")
    assert ck["model_args"]["in_channels"] == 6 and ck["model_args"]["levels"] == ["c3", "c4", "c5"]
    assert ck["model_args"]["width"] == 0.125 and ck["config"]["thermal_factor"] == 16
    assert ck["head_levels"] == ["c3", "c4", "c5"]  # the detection neck reads every level
    lineage = ck["lineage"]
    attrs = open_store(store).attrs
    assert lineage["teacher_sha256"] == sha
    assert lineage["store"]["dataset_sha256"] == attrs["dataset"]["fingerprint"]["sha256"]
    assert ck["dataset_fingerprint"]["sha256"] == attrs["dataset"]["fingerprint"]["sha256"]
    assert len(lineage["store"]["attrs_sha256"]) == 64 and lineage["store"]["samples_used"] == 8
    log = read_log(tmp_path / "student.metrics.jsonl")
    assert {"loss/task", "loss/attention", "loss/semantic", "loss/cls", "loss/total"} <= set(log[0])
    feed = [r for r in log if r.get("kind") == "loader"]
    assert len(feed) == 1 and feed[0]["step_samples_per_s"] > 0
    saved = yaml.safe_load((tmp_path / "student.config.yaml").read_text())
    assert saved["task"] == "detection" and saved["levels"] == ["c3", "c4", "c5"]
    # md evaluate model rebuilds the student and reduces thermal as in training.
    res = json.loads(run_cli("evaluate", "model", str(out), "--data", str(synth_det), "--json"))
    assert res["model_kind"] == "student" and res["thermal_factor"] == 16
    assert set(res["miss_rate"]) == {"all", "day", "night"}
    assert all(isinstance(res["miss_rate"][k], float) for k in ("all", "day", "night"))
    # --groups adds the per-group view and changes nothing of the plain result
    grouped = json.loads(
        run_cli(
            "evaluate",
            "model",
            str(out),
            "--data",
            str(synth_det),
            "--json",
            "--groups",
            "day_night,scale,occlusion",
        )
    )
    assert grouped["miss_rate"] == res["miss_rate"]
    assert grouped["groups"]["day_night"]["miss_rate"] == {
        k: res["miss_rate"][k] for k in ("day", "night")
    }
    assert set(grouped["groups"]["scale"]["miss_rate"]) == {"near", "medium", "far"}


def test_resume_reaches_the_same_weights(full_store, tmp_path):
    args = ("--store", str(full_store), "iterations=4", "flip=true", "crop=64", "log_every=1")
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    _train(full, *args)
    assert "continue with --resume" in _train(cut, *args, "stop_after=2")
    _train(cut, *args, "--resume")
    assert _same_weights(full, cut), "resumed run diverged"
    a, b = _losses(tmp_path / "full.metrics.jsonl"), _losses(tmp_path / "cut.metrics.jsonl")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == list(range(4))
    assert a[-1]["loss/total"] == b[-1]["loss/total"]  # bit-identical weights, same batches


def test_raw_store_trains_to_the_weights_of_lossless(det_teacher, synth_det, tmp_path):
    """`--codec raw` stores lossless's float16 values uncompressed (with bundled inputs): a
    student trained from either is bitwise the same."""
    bundle = ("--bundle-inputs", "--thermal-factor", "16")
    raw = cache(det_teacher, synth_det, tmp_path / "raw.zarr", "--codec", "raw", *bundle)
    lossless = cache(det_teacher, synth_det, tmp_path / "l.zarr", *bundle)
    name = "inputs/visible"
    assert open_store(raw).stored_bytes(name) > open_store(lossless).stored_bytes(name)
    args = ("iterations=2", "crop=64")
    _train(tmp_path / "raw.pt", "--store", str(raw), *args)
    _train(tmp_path / "l.pt", "--store", str(lossless), *args)
    assert _same_weights(tmp_path / "raw.pt", tmp_path / "l.pt")


def test_zip_packed_store_trains_to_the_same_weights(plain_store, synth_det, tmp_path):
    packed = tmp_path / "plain.zip"
    run_cli("store", "pack", str(plain_store), str(packed))
    args = ("--data", str(synth_det), "iterations=1")
    _train(tmp_path / "dir.pt", "--store", str(plain_store), *args)
    _train(tmp_path / "zip.pt", "--store", str(packed), *args)
    assert _same_weights(tmp_path / "dir.pt", tmp_path / "zip.pt")
    lin = [load_checkpoint(tmp_path / f"{k}.pt")["lineage"]["store"] for k in ("dir", "zip")]
    assert lin[0]["attrs_sha256"] == lin[1]["attrs_sha256"] and lin[1]["url"].endswith(".zip")


def test_native_visible_only_student_needs_no_store(synth_det, tmp_path):
    out = tmp_path / "native.pt"
    _train(
        out,
        "--data",
        str(synth_det),
        "--no-distill",
        "--thermal-factor",
        "none",
        "iterations=2",
        "log_every=1",
    )
    ck = load_checkpoint(out, model_kind="student")
    assert ck["model_args"]["in_channels"] == 3 and ck["model_args"]["levels"] == []
    assert ck["config"]["thermal_factor"] == "none" and ck["lineage"]["store"] is None
    assert not any(k.startswith("attention") for k in ck["weights"])
    assert set(_losses(tmp_path / "native.metrics.jsonl")[0]) == {
        "iteration",
        "lr",
        "loss/cls",
        "loss/box",
        "loss/total",
    }
    res = json.loads(run_cli("evaluate", "model", str(out), "--data", str(synth_det), "--json"))
    assert res["thermal_factor"] == "none" and res["samples"] == 4


# Online vs stored targets differ by the lossless codec (fp16 features, masks in 1/255 steps):
# a deterministic rounding of these targets (the CPU's float32 differences, ~10 u of the maps,
# move the losses by ~1e-6 of it), not summation noise. Its worst-case first-order effect,
# sum |dL/dt| * step, is 1.0e-3 (F-MSE) and 2.3e-3 (Dice) of the losses on such batches
# (test_loader checks it per batch); we allow 2^-8. Measured: 1e-5 to 3.5e-4.
CODEC_LOSS_RTOL = 2.0**-8


def test_online_teacher_first_step_losses_equal_offline(
    plain_store, det_teacher, synth_det, tmp_path
):
    args = ("--store", str(plain_store), "--data", str(synth_det), "iterations=1", "crop=64")
    _train(tmp_path / "off.pt", *args)
    _train(tmp_path / "on.pt", *args, "--online-teacher", str(det_teacher))
    off = _losses(tmp_path / "off.metrics.jsonl")[0]
    on = _losses(tmp_path / "on.metrics.jsonl")[0]
    assert on["loss/task"] == off["loss/task"]  # the teacher's targets do not enter it
    for k in ("loss/attention", "loss/semantic"):
        assert on[k] == pytest.approx(off[k], rel=CODEC_LOSS_RTOL), k
    ck = load_checkpoint(tmp_path / "on.pt")
    assert ck["lineage"]["teacher_sha256"] == file_sha256(det_teacher)
    assert ck["lineage"]["online_teacher"] == str(det_teacher)


def test_online_teacher_without_crop_on_unaligned_image_size(
    plain_store, det_teacher, synth_det, tmp_path
):
    # 96x80 is not a multiple of 32: without a crop the whole maps are the targets (no cut),
    # and they equal what the store holds for the same samples.
    args = ("--store", str(plain_store), "--data", str(synth_det), "iterations=1")
    _train(tmp_path / "off.pt", *args)
    _train(tmp_path / "on.pt", *args, "--online-teacher", str(det_teacher))
    off = _losses(tmp_path / "off.metrics.jsonl")[0]
    on = _losses(tmp_path / "on.metrics.jsonl")[0]
    for k in ("loss/attention", "loss/semantic"):
        assert on[k] == pytest.approx(off[k], rel=CODEC_LOSS_RTOL), k


def _one_line_error(out: Path, *args: str) -> str:
    err = _train(out, *args, expect=2)
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_flip_needs_stored_flipped_views(plain_store, synth_det, tmp_path):
    err = _one_line_error(
        tmp_path / "s.pt", "--store", str(plain_store), "--data", str(synth_det), "flip=true"
    )
    assert "flipped views" in err and "flip=false" in err


def test_incomplete_store_lists_missing_shards_or_trains_on_written(
    det_teacher, synth_det, tmp_path
):
    store = cache(
        det_teacher,
        synth_det,
        tmp_path / "part.zarr",
        "--bundle-inputs",
        "--thermal-factor",
        "16",
        "stop_after_shards=1",
    )
    err = _one_line_error(tmp_path / "s.pt", "--store", str(store))
    assert "shards [1]" in err and "--allow-partial" in err
    out = tmp_path / "partial.pt"
    _train(out, "--store", str(store), "--allow-partial", "iterations=3")
    assert load_checkpoint(out)["lineage"]["store"]["samples_used"] == 4


def test_store_from_other_data_is_refused(plain_store, tmp_path):
    other = tmp_path / "other"
    run_cli(
        "data",
        "synth",
        "--task",
        "detection",
        "--out",
        str(other),
        "--n-train",
        "8",
        "--n-test",
        "1",
        "--size",
        "96x80",
        "--seed",
        "7",
    )
    err = _one_line_error(tmp_path / "s.pt", "--store", str(plain_store), "--data", str(other))
    assert "another dataset" in err and str(plain_store) in err


def test_level_and_thermal_mismatches_are_refused(det_teacher, synth_det, full_store, tmp_path):
    store = cache(det_teacher, synth_det, tmp_path / "c4.zarr", "--levels", "c4")
    err = _one_line_error(
        tmp_path / "s.pt", "--store", str(store), "--data", str(synth_det), "levels=[c3,c4]"
    )
    assert "levels [c4]" in err
    err = _one_line_error(tmp_path / "s.pt", "--store", str(full_store), "--thermal-factor", "4")
    assert "reduced by 16, not by 4" in err
    err = _one_line_error(tmp_path / "s.pt", "--store", str(full_store), "width=0.25")
    assert "channels" in err and "width" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "pass --store"),
        (("--no-distill",), "pass --data"),
        (("--online-teacher", "t.pt", "--store", "s.zarr"), "needs --data"),
        (("--no-distill", "attention=false", "semantic=false"), "pass --data"),
        (("--store", "s.zarr", "attention=false", "semantic=false"), "nothing to distil"),
        (("--store", "s.zarr", "lr=-1"), "'lr': -1 must be > 0"),
        (("--store", "s.zarr", "batch_size=0"), "'batch_size': 0 must be >= 1"),
        (("--store", "s.zarr", "iterations=-5"), "'iterations': -5 must be >= 0"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, args, words):
    assert words in _one_line_error(tmp_path / "s.pt", *args)


def test_store_whose_array_metadata_was_edited_is_refused(full_store, tmp_path):
    # Issue 12: a features/c4 zarr.json edited to fewer channels was trained on, though
    # verify rejects it. The trainer opens arrays through the store, which checks the schema.
    store = tmp_path / "edited.zarr"
    shutil.copytree(full_store, store)
    meta = store / "features" / "c4" / "zarr.json"
    doc = json.loads(meta.read_text())
    channels = doc["shape"][1]
    doc["shape"][1] = channels * 3 // 4
    meta.write_text(json.dumps(doc))
    err = _one_line_error(tmp_path / "s.pt", "--store", str(store))
    assert f"{store}: array features/c4 does not match the store schema" in err
    assert f"shape (8, {channels * 3 // 4}," in err and "fetch or cache it again" in err
    assert not (tmp_path / "s.pt").exists()


def test_misaligned_crop_is_refused(full_store, tmp_path):
    err = _one_line_error(tmp_path / "s.pt", "--store", str(full_store), "crop=48")
    assert "multiple of align=32" in err


def _prefetch_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "md-student-prefetch"]


def test_prefetch_matches_no_prefetch_and_ends_with_the_run(full_store, tmp_path):
    """The read-ahead thread (default with 0 workers) trains on the same batches: bitwise
    the weights of prefetch_batches=0; and it is gone when the run returns."""
    args = ("--store", str(full_store), "iterations=3", "flip=true", "crop=64")
    _train(tmp_path / "ahead.pt", *args)
    _train(tmp_path / "plain.pt", *args, "prefetch_batches=0")
    assert _same_weights(tmp_path / "ahead.pt", tmp_path / "plain.pt")
    assert _prefetch_threads() == []


def test_prefetch_ends_cleanly_on_a_read_error(full_store, tmp_path, monkeypatch):
    from md.errors import StoreError
    from md.student_train.config import StudentTrainConfig
    from md.student_train.loader import DistillDataset
    from md.student_train.run import run

    calls = {"n": 0}
    real = DistillDataset.__getitems__

    def failing(self, keys):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StoreError("s.zarr: cannot read features/c3 (injected)")
        return real(self, keys)

    monkeypatch.setattr(DistillDataset, "__getitems__", failing)
    cfg = StudentTrainConfig(
        store=str(full_store), iterations=6, batch_size=2, width=0.125, head_channels=32,
        progress=False,
    )  # fmt: skip
    with pytest.raises(StoreError, match="injected"):
        run(cfg, out=tmp_path / "s.pt")
    assert calls["n"] == 3  # raised at the batch that failed; nothing read after it
    assert _prefetch_threads() == []


def test_prefetch_ends_cleanly_on_an_interrupt_and_resume_stays_exact(
    full_store, tmp_path, monkeypatch
):
    import md.train.loop as loop_mod
    from md.student_train.config import StudentTrainConfig
    from md.student_train.run import run

    cfg = StudentTrainConfig(
        store=str(full_store), iterations=4, batch_size=2, width=0.125, head_channels=32,
        progress=False, flip=True, crop=(64,),
    )  # fmt: skip
    run(cfg, out=tmp_path / "full.pt")
    real = loop_mod._step

    def interrupted(*a, **k):
        if a[5] == 2:  # iteration 2: Ctrl-C while the thread reads ahead
            raise KeyboardInterrupt
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(loop_mod, "_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, out=tmp_path / "cut.pt")
    assert _prefetch_threads() == []
    run(cfg, out=tmp_path / "cut.pt", resume=True)
    assert _same_weights(tmp_path / "full.pt", tmp_path / "cut.pt")


def test_inputs_built_on_the_device_train_to_the_same_weights(full_store, tmp_path):
    """Bundled inputs shipped as uint8 and assembled in the step (the default) train to
    bitwise the weights of the host-built input (on a CPU both are the same operations)."""
    args = ("--store", str(full_store), "iterations=3", "flip=true", "crop=64")
    _train(tmp_path / "dev.pt", *args)
    _train(tmp_path / "host.pt", *args, "device_inputs=false")
    assert _same_weights(tmp_path / "dev.pt", tmp_path / "host.pt")


def test_decoded_image_cache_trains_to_the_same_weights(plain_store, synth_det, tmp_path):
    """Images decoded once into ``image_cache`` (first run writes it, the second reads only
    from it) give bitwise the weights of decoding every PNG each time."""
    args = ("--store", str(plain_store), "--data", str(synth_det), "iterations=4")
    cache_dir = tmp_path / "decoded"
    _train(tmp_path / "decode.pt", *args)
    _train(tmp_path / "fill.pt", *args, f"image_cache={cache_dir}")
    (entries,) = [sorted(d.glob("*.npy")) for d in cache_dir.iterdir()]
    assert entries and not list(cache_dir.rglob("*.tmp"))
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    _train(tmp_path / "cached.pt", *args, f"image_cache={cache_dir}")
    assert {p: p.stat().st_mtime_ns for p in entries} == stamps  # read back, not rewritten
    assert _same_weights(tmp_path / "decode.pt", tmp_path / "fill.pt")
    assert _same_weights(tmp_path / "decode.pt", tmp_path / "cached.pt")


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_group_weights_train_and_go_into_the_lineage(task, synth_det, synth_seg, tmp_path):
    data = synth_det if task == "detection" else synth_seg
    out = tmp_path / "gw.pt"
    common = ("--data", str(data), "--no-distill", "iterations=2", "group_field=day_night")
    _train(out, *common, "group_weights=inverse_frequency")
    lin = load_checkpoint(out)["lineage"]["group_weights"]
    counts = lin["counts"]
    assert set(counts) <= {"day", "night"} and sum(counts.values()) > 0
    n = sum(counts.values())  # inverse frequency, normalised to mean 1 over the samples
    assert sum(lin["weights"][g] * c for g, c in counts.items()) == pytest.approx(n)
    _train(tmp_path / "plain.pt", *common)
    assert load_checkpoint(tmp_path / "plain.pt")["lineage"]["group_weights"] is None
