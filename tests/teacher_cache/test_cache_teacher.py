"""`md cache-teacher` end to end on tiny synthetic data: targets, resume, flips, bundles,
provenance, refusals."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from zarr.storage import LocalStore

import md.teacher_cache.shards as shards_module
from md.data import dataset_fingerprint, open_dataset
from md.data.transforms import reduce_thermal
from md.errors import DataError
from md.models.checkpoint import file_sha256
from md.stores import SCHEMA_VERSION, TargetStore, open_store, verify
from md.stores.codecs import get_preset
from md.teacher_cache import CacheConfig, load_teacher, low_thermal, run, student_thermal
from tests.conftest import run_cli
from tests.fp import fp16_target_tolerance, mask_target_tolerance
from tests.teacher_cache.conftest import train_tiny

FULL = ["--flip-views", "--bundle-inputs", "--thermal-factor", "16"]


def cache(teacher: Path, data: Path, store: Path, *extra: str, expect: int = 0) -> str:
    """`md cache-teacher` on the 8 training samples, shards of 3 (3 + 3 + 2), batches of 2."""
    return run_cli(
        "cache-teacher",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--store",
        str(store),
        "--shard-size",
        "3",
        "--batch-size",
        "2",
        *extra,
        "progress=false",
        expect=expect,
    )


def raw_arrays(url: Path) -> dict[str, np.ndarray]:
    ts = open_store(url)
    return {name: np.asarray(ts.raw_array(name)[:]) for name in ts.raw_names()}


def teacher_on(
    teacher_path: Path,
    visible: torch.Tensor,
    thermal: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> dict:
    teacher, _ = load_teacher(teacher_path)
    teacher = teacher.to(dtype)
    with torch.inference_mode():
        return teacher.forward_features(visible[None].to(dtype), thermal[None].to(dtype))


def assert_lossless_targets(got: dict, name: str, i: int, ref: dict, exact: dict, lv: str) -> None:
    """Stored (cache run, batches of 2) vs a one-image float32 forward: the fp16 codec's step
    and a float32 slack measured against the float64 forward `exact` (tests/fp.py)."""
    live, f64 = ref["features"][lv][0], exact["features"][lv][0]
    tol = fp16_target_tolerance(live, f64).numpy()
    diff = np.abs(got[f"features{name}/{lv}"][i].astype(np.float64) - live.double().numpy())
    assert (diff <= tol).all(), (lv, float((diff / tol).max()))
    m_tol = mask_target_tolerance(ref["masks"][lv][0], exact["masks"][lv][0])
    np.testing.assert_allclose(
        got[f"attention{name}/{lv}"][i], ref["masks"][lv][0], rtol=0, atol=m_tol
    )


def test_targets_ids_and_summary(det_teacher, synth_det, tmp_path):
    store = tmp_path / "s.zarr"
    out = cache(det_teacher, synth_det, store)
    ts = open_store(store)
    assert ts.is_complete() and ts.num_shards == 3 and ts.n == 8
    assert [lv.name for lv in ts.schema.levels] == ["c3", "c4", "c5"]
    ds = open_dataset(synth_det, split="train")
    got = ts.read(range(8))
    assert got["sample_id"].tolist() == [s.id for s in ds.samples]
    assert got["group"].tolist() == [s.group for s in ds.samples]
    for i in (0, 7):
        ref = teacher_on(det_teacher, ds[i]["visible"], ds[i]["thermal"])
        exact = teacher_on(det_teacher, ds[i]["visible"], ds[i]["thermal"], torch.float64)
        for lv in ("c3", "c4", "c5"):
            assert_lossless_targets(got, "", i, ref, exact, lv)
    # The last line lists the stored bytes per sample of every array.
    last = out.strip().splitlines()[-1]
    assert last.startswith("bytes/sample (lossless):")
    assert all(name in last for name in ts.raw_names())
    assert ": ok (8 samples, 3 shards" in run_cli("store", "verify", str(store))
    again = cache(det_teacher, synth_det, store)
    assert "nothing to do" in again


def test_resume_after_interruptions_equals_uninterrupted(
    det_teacher, synth_det, tmp_path, monkeypatch
):
    whole, cut = tmp_path / "whole.zarr", tmp_path / "cut.zarr"
    cache(det_teacher, synth_det, whole, *FULL, "--codec", "compact")
    # 1. A clean stop between shards.
    out = cache(det_teacher, synth_det, cut, *FULL, "--codec", "compact", "stop_after_shards=1")
    assert "rerun the same command to resume" in out
    assert open_store(cut).missing_shards() == [1, 2]
    # 2. A crash in the teacher forward, in the middle of shard 1 (its second batch).
    calls = {"n": 0}
    real_targets = shards_module.batch_targets

    def crashing_targets(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the teacher forward")
        return real_targets(*args, **kwargs)

    monkeypatch.setattr(shards_module, "batch_targets", crashing_targets)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(det_teacher, synth_det, cut))
    monkeypatch.undo()
    assert open_store(cut).missing_shards() == [1, 2]
    # 3. An interrupt in the writer, halfway through storing shard 1.
    real_write = TargetStore.write_shard

    def interrupted_write(self, k, arrays, *args, **kwargs):
        h = self._handle()
        with h.store.writing():  # half a shard lands on disk, `written` is never set
            h.array("features/c3")[self.shard_range(k).start] = 7
        raise KeyboardInterrupt

    monkeypatch.setattr(TargetStore, "write_shard", interrupted_write)
    err = cache(det_teacher, synth_det, cut, *FULL, "--codec", "compact", expect=130)
    assert "finished shards are kept" in err
    monkeypatch.setattr(TargetStore, "write_shard", real_write)
    assert open_store(cut).missing_shards() == [1, 2]
    # Resume: only the unwritten shards are computed; every array equals the whole run's.
    summary = run(_cfg(det_teacher, synth_det, cut))
    assert summary["shards_written"] == 2 and summary["shards_skipped"] == 1
    a, b = raw_arrays(whole), raw_arrays(cut)
    assert a.keys() == b.keys() and "features_flip/c5" in a and "inputs/thermal" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert verify(cut).ok


def _cfg(teacher: Path, data: Path, store: Path) -> CacheConfig:
    return CacheConfig(
        teacher=str(teacher),
        data=str(data),
        store=str(store),
        shard_size=3,
        batch_size=2,
        flip_views=True,
        bundle_inputs=True,
        thermal_factor=16,
        codec="compact",
        progress=False,
    )


def test_flip_views_are_the_teacher_on_flipped_images(det_teacher, synth_det, tmp_path):
    store = tmp_path / "flip.zarr"
    cache(det_teacher, synth_det, store, "--flip-views", "--levels", "c3,c5")
    got = open_store(store).read([5])
    item = open_dataset(synth_det, split="train")[5]
    ref = teacher_on(det_teacher, item["visible"].flip(-1), item["thermal"].flip(-1))
    exact = teacher_on(
        det_teacher, item["visible"].flip(-1), item["thermal"].flip(-1), torch.float64
    )
    for lv in ("c3", "c5"):
        flipped = got[f"features_flip/{lv}"][0]
        assert_lossless_targets(got, "_flip", 0, ref, exact, lv)
        # Mirroring the stored map is not the same thing (the teacher is not flip-equivariant).
        mirrored = got[f"features/{lv}"][0][..., ::-1]
        assert (
            np.abs(mirrored - flipped).max()
            > 10 * np.abs(flipped - ref["features"][lv][0].numpy()).max()
        )


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_bundled_inputs_and_boxes(det_teacher, synth_det, tmp_path, compression):
    store = tmp_path / "bundle.zarr"
    bundle = ("--bundle-inputs", "--thermal-factor", "16", "--input-compression", compression)
    cache(det_teacher, synth_det, store, *bundle)
    ts = open_store(store)
    for name in ("inputs/visible", "inputs/thermal"):  # as asked, and read by plain zarr too
        arr = zarr.open_array(str(store), path=name, mode="r")
        names = [c.to_dict()["name"] for c in arr.compressors]
        assert names == (["zstd", "crc32c"] if compression == "zstd" else ["crc32c"]), name
        np.testing.assert_array_equal(arr[:], ts.read(range(8), [name])[name])
    ds = open_dataset(synth_det, split="train")
    got = ts.read(range(8))
    assert got["inputs/thermal"].shape == (8, 1, 20, 24)  # 80x96 / 4 per side
    for i in range(8):
        item = ds[i]
        vis = np.rint(item["visible"].numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(got["inputs/visible"][i], vis)
        low = low_thermal(item["thermal"][None], 16)[0].numpy()
        np.testing.assert_array_equal(got["inputs/thermal"][i], np.rint(low * 255))
        # The student's thermal from the bundle is reduce_thermal's, up to uint8 rounding.
        up = student_thermal(got["inputs/thermal"][i : i + 1], (80, 96))[0]
        ref = reduce_thermal(item["thermal"], 16)
        assert (up - ref).abs().max() <= 1 / 510 + 1e-5
        k = int(got["num_boxes"][i])
        assert k == len(item["boxes"])
        np.testing.assert_allclose(got["boxes"][i, :k, :4], item["boxes"].numpy())
        np.testing.assert_array_equal(got["boxes"][i, :k, 4], item["box_ignore"].numpy())
        np.testing.assert_array_equal(got["boxes"][i, :k, 5], item["box_occlusion"].numpy())
        assert not got["boxes"][i, k:].any()
    assert ts.attrs["cache"]["box_fields"] == ["x1", "y1", "x2", "y2", "ignore", "occlusion"]


def test_segmentation_bundle_stores_labels(synth_seg, tmp_path):
    teacher = train_tiny(synth_seg, tmp_path / "seg.pt", "segmentation")
    store = tmp_path / "seg.zarr"
    cache(teacher, synth_seg, store, "--bundle-inputs", "--thermal-factor", "4", "--levels", "c4")
    ts = open_store(store)
    ds = open_dataset(synth_seg, split="train")
    got = ts.read([0, 6])
    np.testing.assert_array_equal(got["labels"][1], ds[6]["labels"].numpy())
    assert got["inputs/thermal"].shape == (2, 1, 32, 48)
    assert ts.schema.task == "segmentation" and [lv.name for lv in ts.schema.levels] == ["c4"]
    assert verify(store).ok


def test_provenance_matches_checkpoint_and_data(det_teacher, synth_det, tmp_path):
    store = tmp_path / "p.zarr"
    summary = json.loads(cache(det_teacher, synth_det, store, "--codec", "compact", "--json"))
    assert summary["complete"] and summary["samples_written"] == 8
    attrs = open_store(store).attrs
    teacher, ckpt = load_teacher(det_teacher)
    ds = open_dataset(synth_det, split="train")
    fp = dataset_fingerprint(ds)
    assert attrs["teacher"]["sha256"] == file_sha256(det_teacher)
    assert attrs["teacher"]["config"] == ckpt["config"]
    assert attrs["teacher"]["model_args"] == ckpt["model_args"]
    assert attrs["dataset"]["fingerprint"]["sha256"] == fp["sha256"]
    assert open_store(store).dataset_fingerprint()["files"] == fp["files"]  # beside the root
    assert attrs["dataset"]["split"] == "train" and attrs["dataset"]["image_size"] == [80, 96]
    assert [lv["name"] for lv in attrs["levels"]] == ["c3", "c4", "c5"]
    for lv in attrs["levels"]:
        assert lv["stride"] == teacher.strides[lv["name"]]
        assert lv["channels"] == teacher.out_channels[lv["name"]]
    assert attrs["task"] == "detection" and attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["codec"]["name"] == "compact"
    assert attrs["codec"]["quantization"] == get_preset("compact").quantization
    assert attrs["created"] and attrs["tool_version"]
    assert attrs["last_run"]["teacher_path"] == str(det_teacher.resolve())


def test_rerun_records_last_run_when_a_kill_took_the_final_record(det_teacher, synth_det, tmp_path):
    # Issue 12: a kill after the last shard but before `last_run` left a complete store
    # without it, and no-op reruns never wrote it. Such a rerun records itself.
    store = tmp_path / "s.zarr"
    cache(det_teacher, synth_det, store)
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    first = doc["attributes"].pop("last_run")
    meta.write_text(json.dumps(doc))
    summary = json.loads(cache(det_teacher, synth_det, store, "--json"))
    assert summary["shards_written"] == 0
    last = open_store(store).attrs["last_run"]
    assert last["complete"] and last["shards_written"] == 0
    assert last["teacher_path"] == first["teacher_path"]
    # With the record in place a no-op rerun leaves it alone (it names the run that worked).
    meta_before = meta.read_bytes()
    cache(det_teacher, synth_det, store)
    assert meta.read_bytes() == meta_before


def test_other_teacher_or_data_is_refused_unless_overwrite(
    det_teacher, other_det_teacher, synth_det, tmp_path
):
    store = tmp_path / "s.zarr"
    cache(det_teacher, synth_det, store)
    err = cache(other_det_teacher, synth_det, store, expect=2)
    assert "another teacher" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    err = run_cli(
        "cache-teacher",
        "--teacher",
        str(det_teacher),
        "--data",
        str(synth_det),
        "--split",
        "test",
        "--store",
        str(store),
        "--shard-size",
        "3",
        "progress=false",
        expect=2,
    )
    assert "other data" in err and "'test'" in err and len(err.strip().splitlines()) == 1
    err = cache(det_teacher, synth_det, store, "--codec", "compact", expect=2)
    assert "other options (codec lossless -> compact" in err
    cache(other_det_teacher, synth_det, store, "--overwrite")
    ts = open_store(store)
    assert ts.attrs["teacher"]["sha256"] == file_sha256(other_det_teacher)
    assert [lv.name for lv in ts.schema.levels] == ["c4", "c5"] and ts.is_complete()


def test_bad_options_are_one_line_errors(other_det_teacher, synth_det, tmp_path):
    err = cache(other_det_teacher, synth_det, tmp_path / "a.zarr", "--levels", "c3", expect=2)
    assert "not fused by this teacher" in err and "c4,c5" in err
    err = cache(other_det_teacher, synth_det, tmp_path / "b.zarr", "--bundle-inputs", expect=2)
    assert "--thermal-factor" in err
    err = cache(
        other_det_teacher, synth_det, tmp_path / "b.zarr", "--input-compression", "none", expect=2
    )
    assert "add --bundle-inputs" in err
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    err = cache(other_det_teacher, synth_det, tmp_path / "c.zarr", "--batch-size", "0", expect=2)
    assert "Invalid value for '--batch-size': 0 is not in the range x>=1" in err
    err = cache(other_det_teacher, synth_det, tmp_path / "c.zarr", "max_queued=0", expect=2)
    assert "'max_queued': 0 must be >= 1" in err and not (tmp_path / "c.zarr").exists()


def _full_disk(monkeypatch, keys: str = "") -> None:
    """Every local store write whose key contains `keys` fails as on a full disk (ENOSPC).
    Patched on the class, so the forked writer process inherits it."""
    real = LocalStore.set

    async def full(self, key, value, *args, **kwargs):
        if keys in key:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.root / key))
        return await real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", full)


def test_a_full_disk_creating_the_store_is_one_line_and_leaves_nothing(
    det_teacher, synth_det, tmp_path, monkeypatch
):
    _full_disk(monkeypatch, keys="attention")  # the layout gets half way
    store = tmp_path / "s.zarr"
    err = cache(det_teacher, synth_det, store, expect=2)
    (line,) = err.strip().splitlines()
    assert "cannot write a new store: no space left on the disk" in line and "df -h" in line
    assert not store.exists() or not any(store.iterdir())  # no half store to trip the rerun
    monkeypatch.undo()
    cache(det_teacher, synth_det, store)  # once there is space: a plain rerun, no --overwrite
    assert verify(store).ok


def test_a_full_disk_writing_a_shard_says_write_and_keeps_the_finished_ones(
    det_teacher, synth_det, tmp_path, monkeypatch
):
    store = tmp_path / "s.zarr"
    cache(det_teacher, synth_det, store, "stop_after_shards=1")  # shard 0 is written
    _full_disk(monkeypatch, keys="/c/1")  # then the disk fills up at shard 1
    err = cache(det_teacher, synth_det, store, expect=2)
    (line,) = err.strip().splitlines()
    assert "cannot write shard 1: no space left on the disk" in line
    assert "finished shards are kept" in line
    assert "cannot read" not in line and "verify" not in line
    monkeypatch.undo()
    assert open_store(store).missing_shards() == [1, 2]
    cache(det_teacher, synth_det, store)
    assert verify(store).ok


def test_images_of_other_sizes_are_refused(det_teacher, synth_det, tmp_path):
    data = tmp_path / "mixed"
    shutil.copytree(synth_det, data)
    sample = open_dataset(data, split="train").samples[2]
    for path in (sample.visible_path, sample.thermal_path):
        with Image.open(path) as img:
            img.resize((64, 48)).save(path)
    with pytest.raises(DataError, match="fixed-shape"):
        run(
            CacheConfig(
                teacher=str(det_teacher),
                data=str(data),
                store=str(tmp_path / "m.zarr"),
                progress=False,
            )
        )


def test_bf16_autocast_runs_and_is_part_of_the_identity(det_teacher, synth_det, tmp_path):
    # On CUDA `--amp bf16` autocasts the teacher; CPU autocast runs the same code path.
    store = tmp_path / "bf16.zarr"
    cache(det_teacher, synth_det, store, "--amp", "bf16", "--levels", "c5", "--device", "cpu")
    ts = open_store(store)
    assert ts.attrs["cache"]["amp"] == "bf16" and ts.is_complete()
    item = open_dataset(synth_det, split="train")[0]
    ref = teacher_on(det_teacher, item["visible"], item["thermal"])["features"]["c5"][0]
    got = ts.read([0])["features/c5"][0]
    assert np.abs(got - ref.numpy()).max() <= 0.05 * np.abs(ref.numpy()).max()
    err = cache(det_teacher, synth_det, store, "--levels", "c5", expect=2)
    assert "other options" in err and "cache" in err


def test_reading_ahead_on_a_thread_changes_no_byte(det_teacher, synth_det, tmp_path):
    """The read-ahead thread (default) and reading in the teacher's thread give the same
    store, with either writer."""
    stores = {}
    for read_ahead, writer in ((0, "thread"), (2, "thread"), (2, "process")):
        url = tmp_path / f"ra{read_ahead}-{writer}.zarr"
        cfg = dataclasses.replace(
            _cfg(det_teacher, synth_det, url), read_ahead=read_ahead, writer=writer
        )
        run(cfg)
        stores[(read_ahead, writer)] = raw_arrays(url)
    base = stores[(0, "thread")]
    for key, arrays in stores.items():
        assert arrays.keys() == base.keys(), key
        for name in base:
            np.testing.assert_array_equal(arrays[name], base[name], err_msg=f"{key} {name}")


def test_gil_switch_interval_is_short_during_the_loop_and_restored(
    det_teacher, synth_det, tmp_path, monkeypatch
):
    import sys

    seen: list[float] = []
    real_targets = shards_module.batch_targets

    def recording_targets(*args, **kwargs):
        seen.append(sys.getswitchinterval())
        if len(seen) == 3:
            raise RuntimeError("stop here")
        return real_targets(*args, **kwargs)

    before = sys.getswitchinterval()
    monkeypatch.setattr(shards_module, "batch_targets", recording_targets)
    with pytest.raises(RuntimeError, match="stop here"):
        run(_cfg(det_teacher, synth_det, tmp_path / "s.zarr"))
    assert seen and all(v == pytest.approx(shards_module.GIL_SWITCH_INTERVAL_S) for v in seen)
    assert before > shards_module.GIL_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before  # restored, also after a failure
