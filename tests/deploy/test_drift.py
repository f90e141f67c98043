"""`md cache-teacher` records reference statistics; `md drift` flags fog but not a fresh
in-distribution seed, exits 0 on drift, and refuses a store without statistics in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from md.stores import open_store
from md.stores.reference import read_reference
from tests.conftest import one_torch_thread, run_cli

N = 30  # 10 held-out frames


def synth(out: Path, seed: int, domain: str = "none", n: int = N) -> Path:
    run_cli("data", "synth", "--task", "detection", "--out", str(out), "--n-train", str(n),
            "--n-test", "1", "--size", "96x80", "--seed", str(seed), "--domain", domain)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def ref_store(tiny_det_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    data = synth(root / "base", seed=0)
    store = root / "base.zarr"
    with one_torch_thread():
        run_cli("cache-teacher", "--teacher", str(tiny_det_teacher), "--data", str(data),
                "--store", str(store), "--bundle-inputs", "--thermal-factor", "16",
                "progress=false")  # fmt: skip
    return store


def test_reference_group_is_small_named_and_xarray_ready(ref_store: Path) -> None:
    st = open_store(ref_store)
    entry = st.attrs["reference"]
    assert entry["version"] == 1 and entry["heldout_samples"] == N // 3
    assert entry["bytes"] < 16_000  # a few kB
    ref = read_reference(st.reference_group(), st.url)
    assert np.isclose(ref.hist["visible"].sum(), 1.0) and np.isclose(ref.hist["thermal"].sum(), 1.0)
    group = zarr.open_group(str(ref_store / "reference"), mode="r")
    dims: dict[str, int] = {}
    for name, arr in group.arrays():
        for dim, size in zip(arr.metadata.dimension_names, arr.shape, strict=True):
            assert dims.setdefault(dim, size) == size, f"{name}: {dim} reused with another size"
    for lv in st.schema.levels:
        assert dims[f"channel_{lv.name}"] == lv.channels
    run_cli("store", "verify", str(ref_store))  # the extra group does not break verify


def test_drift_flags_fog_not_a_fresh_seed(ref_store: Path, tmp_path: Path) -> None:
    clean = json.loads(run_cli("drift", "--store", str(ref_store), "--data",
                               str(synth(tmp_path / "clean", seed=1)), "--json"))  # fmt: skip
    assert clean["verdict"] == "in-distribution", clean["tests"]
    assert clean["false_alarm_rate"] == 0.05
    fog = json.loads(run_cli("drift", "--store", str(ref_store), "--data",
                             str(synth(tmp_path / "fog", seed=1, domain="fog")), "--json"))  # fmt: skip
    assert fog["verdict"] == "drift"  # and exit status 0 (run_cli checks it)
    assert fog["tests"]["visible"]["drift"] and not fog["tests"]["thermal"]["drift"]
    assert fog["tests"]["visible"]["score"] > clean["tests"]["visible"]["score"]


def test_select_writes_a_request_of_the_top_frames(ref_store: Path, tmp_path: Path) -> None:
    # Half fog, half clean: the selection must take the fog frames first.
    clean, fog = synth(tmp_path / "c", seed=2, n=8), synth(tmp_path / "f", 2, "fog", n=8)
    mixed = tmp_path / "mixed"
    (mixed / "v").mkdir(parents=True)
    (mixed / "t").mkdir()
    for tag, root in (("c", clean), ("f", fog)):
        for p in sorted((root / "images").rglob("visible/*.png")):
            shutil.copy(p, mixed / "v" / f"{tag}{p.stem}.png")
            shutil.copy(p.parent.parent / "lwir" / p.name, mixed / "t" / f"{tag}{p.stem}.png")
    req = tmp_path / "req.json"
    out = json.loads(run_cli("drift", "--store", str(ref_store), "--visible-dir", str(mixed / "v"),
                             "--thermal-dir", str(mixed / "t"), "--select", "4", "--request",
                             str(req), "--json"))  # fmt: skip
    doc = json.loads(req.read_text())
    assert [f["id"][0] for f in doc["frames"]] == ["f"] * 4
    assert (
        out["request"]["frames"] == 4 and len(doc["frames"][0]["files"]["visible"]["sha256"]) == 64
    )


def test_store_without_reference_is_refused_in_one_line(ref_store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.zarr"
    shutil.copytree(ref_store, old)
    shutil.rmtree(old / "reference")
    out = run_cli("drift", "--store", str(old), "--data", str(synth(tmp_path / "d", 1, n=3)),
                  expect=2)  # fmt: skip
    assert "re-cache with md >=" in out and len(out.strip().splitlines()) == 1


def test_student_tests_are_calibrated_on_the_students_own_heldout_scores(
    ref_store: Path, tmp_path: Path
) -> None:
    student = tmp_path / "st.pt"
    with one_torch_thread():
        run_cli("train-student", "--store", str(ref_store), "--out", str(student), "--preset",
                "cpu-tiny", "batch_size=2", "iterations=2", "progress=false")  # fmt: skip
        clean = json.loads(run_cli("drift", "--store", str(ref_store), "--data",
                                   str(synth(tmp_path / "clean", seed=1)), "--student",
                                   str(student), "--json"))  # fmt: skip
    names = [t for t in clean["tests"] if t.startswith("student_")]
    assert names and all(
        clean["tests"][t]["calibration"]["heldout_frames"] == N // 3 for t in names
    )
    assert clean["tests"]["visible"]["false_alarm_rate"] == pytest.approx(0.05 / (2 + len(names)))
    assert clean["verdict"] == "in-distribution", clean["tests"]
