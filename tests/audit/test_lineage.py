"""`md lineage`: the chain student -> store -> teacher -> data, and which links break."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from md import audit
from tests.conftest import one_torch_thread, run_cli
from tests.student_train.caching import cache

TINY = ("--preset", "cpu-tiny", "progress=false", "batch_size=2", "iterations=1")


@pytest.fixture(scope="module")
def chain(tiny_det_teacher: Path, synth_det: Path, tmp_path_factory: pytest.TempPathFactory):
    """teacher -> store -> student, all logged to one folder's audit.jsonl."""
    root = tmp_path_factory.mktemp("lineage")
    teacher = root / "teacher.pt"
    shutil.copy(tiny_det_teacher, teacher)
    data = root / "data"
    shutil.copytree(synth_det, data)
    store = root / "train.zarr"
    student = root / "student.pt"
    with one_torch_thread():
        cache(teacher, data, store)
        run_cli(
            "train-student",
            "--store",
            str(store),
            "--data",
            str(data),
            "--out",
            str(student),
            *TINY,
        )
    return {"root": root, "teacher": teacher, "data": data, "store": store, "student": student}


def _lineage(*args: str, expect: int = 0) -> dict:
    return json.loads(run_cli("lineage", *args, "--json", expect=expect))


def _status(report: dict) -> dict[str, str]:
    return {lk["link"]: lk["status"] for lk in report["links"]}


def test_intact_chain_holds_and_names_each_node(chain) -> None:
    c = chain
    r = _lineage(
        str(c["student"]),
        "--verify",
        "--store",
        str(c["store"]),
        "--teacher",
        str(c["teacher"]),
        "--data",
        str(c["data"]),
    )
    assert r["ok"], r["links"]
    st = _status(r)
    for name in (
        "student -> store",
        "student -> teacher",
        "student -> training data",
        "store -> teacher",
        "store -> cached data",
        "teacher -> training data",
    ):
        assert st[name] == "holds", (name, st)
    assert r["chain"]["store"]["codec"] and r["chain"]["store"]["created"]
    assert r["chain"]["teacher"]["config"]
    # without --verify nothing is checked; with it, missing artifacts are "not checked"
    assert set(_status(_lineage(str(c["student"]))).values()) == {"not checked"}
    r = _lineage(str(c["student"]), "--verify", "--store", str(c["store"]))
    assert _status(r)["student -> store"] == "holds"
    assert _status(r)["student -> teacher"] == "not checked"
    text = run_cli("lineage", str(c["student"]), "--verify", "--store", str(c["store"]))
    assert "chain holds" in text


def test_a_changed_teacher_byte_breaks_the_teacher_links(chain, tmp_path: Path) -> None:
    bad = tmp_path / "teacher.pt"
    raw = bytearray(chain["teacher"].read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad.write_bytes(bytes(raw))
    r = _lineage(str(chain["student"]), "--verify", "--teacher", str(bad), expect=1)
    st = _status(r)
    assert st["student -> teacher"] == "broken"
    r = _lineage(str(chain["store"]), "--verify", "--teacher", str(bad), expect=1)
    assert _status(r)["store -> teacher"] == "broken"


def test_a_regenerated_dataset_breaks_the_data_links(chain, tmp_path: Path) -> None:
    other = tmp_path / "data"
    run_cli(
        "data", "synth", "--task", "detection", "--out", str(other), "--n-train", "8",
        "--n-test", "4", "--size", "96x80", "--seed", "1",
    )  # fmt: skip
    r = _lineage(
        str(chain["student"]),
        "--verify",
        "--store",
        str(chain["store"]),
        "--data",
        str(other),
        expect=1,
    )
    st = _status(r)
    assert st["student -> training data"] == "broken"
    assert st["store -> cached data"] == "broken"
    assert st["student -> store"] == "holds"
    # the store alone: what it recorded of the teacher's training data breaks too
    r = _lineage(str(chain["store"]), "--verify", "--data", str(other), expect=1)
    assert _status(r)["teacher -> training data"] == "broken"
    r = _lineage(str(chain["store"]), "--verify", "--data", str(chain["data"]))
    assert _status(r)["teacher -> training data"] == "holds"


def test_a_store_rebuilt_from_another_teacher_breaks_the_store_link(
    chain, synth_det: Path, tmp_path: Path
) -> None:
    other_teacher = tmp_path / "teacher2.pt"
    with one_torch_thread():
        run_cli(
            "train-teacher", "--data", str(chain["data"]), "--out", str(other_teacher),
            "--task", "detection", "--preset", "cpu-tiny", "batch_size=2", "iterations=1",
            "seed=7", "progress=false",
        )  # fmt: skip
        rebuilt = tmp_path / "train.zarr"
        run_cli(
            "cache-teacher", "--teacher", str(other_teacher), "--data", str(chain["data"]),
            "--store", str(rebuilt), "--shard-size", "4",
        )  # fmt: skip
    r = _lineage(
        str(chain["student"]), "--verify", "--store", str(rebuilt), "--teacher", str(chain["teacher"]),
        expect=1,
    )  # fmt: skip
    st = _status(r)
    assert st["student -> store"] == "broken"
    assert st["store -> teacher"] == "broken"
    assert st["student -> teacher"] == "holds"


def test_packed_store_and_its_audit_log_travel_together(chain, tmp_path: Path) -> None:
    store_log = chain["store"] / audit.STORE_LOG
    assert audit.verify_log(store_log).ok
    (entry,) = [e for e in audit.read_log(store_log) if e["command"] == "cache-teacher"]
    assert entry["outcome"] == "ok"
    assert entry["inputs"]["teacher"]["sha256"] == audit.file_sha256(chain["teacher"])
    assert entry["outputs"]["store"]["kind"] == "store"
    zip_path = tmp_path / "ship" / "train.zip"
    zip_path.parent.mkdir()
    run_cli("store", "pack", str(chain["store"]), str(zip_path))
    (packed,) = audit.read_log(zip_path.parent / audit.LOG_NAME)
    assert packed["command"] == "store pack"
    assert packed["outputs"]["zip"]["sha256"] == audit.file_sha256(zip_path)
    r = _lineage(str(zip_path), "--verify", "--teacher", str(chain["teacher"]))
    assert _status(r)["store -> pack manifest"] == "holds"
    zip_student = tmp_path / "zip_student.pt"
    with one_torch_thread():
        run_cli(
            "train-student", "--store", str(zip_path), "--data", str(chain["data"]),
            "--out", str(zip_student), *TINY,
        )  # fmt: skip
    r = _lineage(str(zip_student), "--verify", "--store", str(zip_path))
    st = _status(r)
    assert st["student -> pack manifest"] == "holds" and st["student -> store"] == "holds"
    assert r["chain"]["student_lineage"]["store_codec"]
    dest = tmp_path / "gateway" / "train.zarr"
    dest.parent.mkdir()
    run_cli("store", "unpack", str(zip_path), str(dest))
    log = audit.read_log(dest / audit.STORE_LOG)  # the hub's lines, then the unpack
    assert [e["command"] for e in log][-1] == "store unpack"
    assert "cache-teacher" in [e["command"] for e in log]
    assert "intact" in run_cli("audit", "verify", str(dest))
    # the student's run is in the folder's log, chained after cache-teacher
    cmds = [e["command"] for e in audit.read_log(chain["root"] / audit.LOG_NAME)]
    assert cmds[:2] == ["cache-teacher", "train-student"]
    assert audit.verify_log(chain["root"] / audit.LOG_NAME).ok


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_traces_to_its_checkpoint_and_store(chain, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("student.onnx" if fmt == "onnx" else "student.ts.pt")
    with one_torch_thread():
        run_cli("export", str(chain["student"]), "--format", fmt, "--out", str(out))
    (entry,) = audit.read_log(tmp_path / audit.LOG_NAME)
    assert entry["command"] == "export"
    assert entry["inputs"]["checkpoint"]["sha256"] == audit.file_sha256(chain["student"])
    assert entry["outputs"]["model"]["sha256"] == audit.file_sha256(out)
    # from the metadata alone: the recorded store link is checked against the store given
    r = _lineage(str(out), "--verify", "--store", str(chain["store"]))
    st = _status(r)
    assert st["export -> checkpoint"] == "not checked" and st["student -> store"] == "holds"
    assert r["chain"]["export"]["checkpoint_sha256"] == audit.file_sha256(chain["student"])
    r = _lineage(str(out), "--verify", "--checkpoint", str(chain["student"]))
    assert _status(r)["export -> checkpoint"] == "holds"
    # another checkpoint (here the teacher's): its sha256 is not the recorded one
    r = _lineage(str(out), "--verify", "--checkpoint", str(chain["teacher"]), expect=1)
    assert _status(r)["export -> checkpoint"] == "broken"


def test_store_on_s3_carries_its_log_without_credentials(
    chain, s3_bucket: str, tmp_path: Path
) -> None:
    import os

    from md.stores.audit import read_store_log

    zip_path = tmp_path / "train.zip"
    run_cli("store", "pack", str(chain["store"]), str(zip_path))
    url = f"s3://{s3_bucket}/gw/train.zarr"
    run_cli("store", "unpack", str(zip_path), url)
    raw = read_store_log(url)
    log = tmp_path / "copy.jsonl"
    log.write_bytes(raw)
    entries = audit.read_log(log)
    assert audit.verify_log(log).ok
    assert entries[-1]["command"] == "store unpack" and entries[-1]["outcome"] == "ok"
    assert "cache-teacher" in [e["command"] for e in entries]  # shipped from the hub
    text = raw.decode()
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert os.environ[key] not in text
    assert "intact" in run_cli("audit", "verify", url)
