"""`md train-teacher` end to end on tiny synthetic data: outputs, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from md.models import load_model
from md.models.checkpoint import load_checkpoint
from md.train.checkpoint import save_checkpoint
from md.train.metrics_log import read_log
from tests.conftest import run_cli

TINY = ["--preset", "cpu-tiny", "batch_size=2", "progress=false"]


def _train(data, out, *extra):
    return run_cli("train-teacher", "--data", str(data), "--out", str(out), *TINY, *extra)


def test_detection_teacher_writes_checkpoint_log_curve_and_config(synth_det, tmp_path):
    out = tmp_path / "teacher.pt"
    _train(synth_det, out, "--task", "detection", "iterations=4", "log_every=1")
    ck = load_checkpoint(out, task="detection", model_kind="teacher")
    assert ck["iteration"] == 4 and ck["model_args"]["levels"] == ["c3", "c4", "c5"]
    fp = ck["dataset_fingerprint"]
    assert fp["num_samples"] == 8 and len(fp["sha256"]) == 64
    assert ck["config"]["iterations"] == 4 and ck["config"]["width"] == 0.125
    torch.load(out, weights_only=True)  # loadable without pickled classes
    log = read_log(tmp_path / "teacher.metrics.jsonl")
    assert [r["iteration"] for r in log] == [0, 1, 2, 3]
    assert {"loss/total", "loss/cls", "loss/box", "loss/gaff_intra", "loss/gaff_inter"} <= set(
        log[0]
    )
    assert log[0]["lr"] == pytest.approx(1e-6)  # warm-up starts at 1e-6 (MD §4.2)
    assert (tmp_path / "teacher.loss.png").stat().st_size > 1000
    saved = yaml.safe_load((tmp_path / "teacher.config.yaml").read_text())
    assert saved["iterations"] == 4 and saved["task"] == "detection"
    assert not (tmp_path / "teacher.pt.resume").exists()


def test_resume_reaches_the_same_weights(synth_det, tmp_path):
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    args = ("--task", "detection", "iterations=6", "checkpoint_every=100")
    _train(synth_det, full, *args)
    out = _train(synth_det, cut, *args, "stop_after=3")
    assert "continue with --resume" in out and (tmp_path / "cut.pt.resume").exists()
    _train(synth_det, cut, *args, "--resume")
    a = load_checkpoint(full)["weights"]
    b = load_checkpoint(cut)["weights"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    log_full = read_log(tmp_path / "full.metrics.jsonl")
    log_cut = read_log(tmp_path / "cut.metrics.jsonl")
    assert [r["iteration"] for r in log_cut] == [r["iteration"] for r in log_full]
    assert log_cut[-1]["loss/total"] == log_full[-1]["loss/total"]  # resume is bit-identical


def test_resume_refuses_other_options(synth_det, tmp_path):
    out = tmp_path / "t.pt"
    _train(synth_det, out, "--task", "detection", "iterations=4", "stop_after=1")
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(out),
        *TINY,
        "--task",
        "detection",
        "iterations=5",
        "--resume",
        expect=2,
    )
    assert "different config (iterations: 4 then, 5 now)" in err
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(tmp_path / "x.pt"),
        *TINY,
        "--task",
        "detection",
        "--resume",
        expect=2,
    )
    assert "nothing to resume" in err


# TeacherTrainConfig's fields in the order they were saved before the shared RunConfig base
# (which puts the run fields right after the recipe's): resume files of that time.
_OLD_FIELD_ORDER = (
    "iterations",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_iters",
    "warmup_start_lr",
    "seed",
    "task",
    "data",
    "split",
    "fusion",
    "width",
    "levels",
    "pretrained",
    "assign",
    "head_channels",
    "class_weighting",
    "class_weights",
    "hflip",
    "device",
    "amp",
    "channels_last",
    "num_workers",
    "log_every",
    "checkpoint_every",
    "stop_after",
    "progress",
)
_ADDED_SINCE = {"group_weights", "group_field", "seg_foreground"}  # issue 17, issue 18


def test_a_resume_file_with_the_old_field_order_resumes(synth_det, tmp_path):
    """The resume check compares the configs as mappings, so a resume file whose config keys
    come in the order of the earlier dataclass still resumes (and a changed value still
    refuses); the saved config has exactly the fields it had then."""
    out = tmp_path / "t.pt"
    args = ("--task", "detection", "iterations=4")
    _train(synth_det, out, *args, "stop_after=2")
    resume = tmp_path / "t.pt.resume"
    ck = load_checkpoint(resume)
    # fields added since (group reweighting, issue 17) are absent from such a file: at their
    # defaults (the behaviour before they existed) they do not block the resume
    added = {k for k in ck["config"] if k not in _OLD_FIELD_ORDER}
    assert set(_OLD_FIELD_ORDER) <= set(ck["config"]) and added == _ADDED_SINCE
    order = _OLD_FIELD_ORDER
    ck["config"] = {k: ck["config"][k] for k in order}
    payload = {k: v for k, v in ck.items() if k not in ("format", "md_version", "weights_sha256")}
    save_checkpoint(resume, payload)
    assert list(load_checkpoint(resume)["config"]) == list(order)
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(out),
        *TINY,
        *args,
        "lr=0.02",
        "--resume",
        expect=2,
    )
    assert "different config (lr: 0.01 then, 0.02 now)" in err
    assert "wrote" in _train(synth_det, out, *args, "--resume", "log_every=3")
    assert load_checkpoint(out)["iteration"] == 4


def test_segmentation_decision_teacher_and_evaluate(synth_seg, tmp_path):
    out = tmp_path / "dec.pt"
    _train(synth_seg, out, "--task", "segmentation", "--fusion", "decision", "iterations=2")
    ck = load_checkpoint(out, task="segmentation", model_kind="decision")
    assert {"visible.trunk.conv1.weight", "thermal.trunk.conv1.weight"} <= set(ck["weights"])
    preds = tmp_path / "preds"
    res = json.loads(
        run_cli(
            "evaluate",
            "model",
            str(out),
            "--data",
            str(synth_seg),
            "--save-results",
            str(preds),
            "--json",
        )
    )
    assert set(res["mean_accuracy"]) == {"all", "day", "night"}
    assert 0 <= res["mean_iou"]["all"] <= 100 and res["samples"] == 4
    assert len(list(preds.glob("*.png"))) == 4
    # The predictions on disk score the same through the file-based evaluator.
    again = json.loads(
        run_cli(
            "evaluate",
            "mfnet-predictions",
            str(preds),
            "--labels",
            str(synth_seg),
            "--list",
            str(synth_seg / "test.txt"),
            "--json",
        )
    )
    assert again["mean_iou"]["all"] == pytest.approx(res["mean_iou"]["all"])


def test_evaluate_detection_teacher_and_wrong_task(synth_det, synth_seg, tmp_path):
    out = tmp_path / "t.pt"
    _train(synth_det, out, "--task", "detection", "iterations=2")
    results = tmp_path / "results.txt"
    res = json.loads(
        run_cli(
            "evaluate",
            "model",
            str(out),
            "--data",
            str(synth_det),
            "--save-results",
            str(results),
            "--latency",
            "--json",
        )
    )
    assert set(res["miss_rate"]) == {"all", "day", "night"}
    assert res["latency"]["median_ms"] > 0 and res["latency"]["device"] == "cpu"
    if results.stat().st_size:
        first = results.read_text().splitlines()[0].split(",")
        assert len(first) == 6 and 1 <= int(first[0]) <= 4
    err = run_cli(
        "evaluate", "model", str(out), "--data", str(synth_det), "--batch-size", "-1", expect=2
    )
    assert "Invalid value for '--batch-size': -1 is not in the range x>=1" in err
    err = run_cli("evaluate", "model", str(out), "--data", str(synth_seg), expect=2)
    assert "detection checkpoint" in err and "segmentation" in err


def test_task_mismatch_with_data_is_one_line(synth_seg, tmp_path):
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_seg),
        "--out",
        str(tmp_path / "t.pt"),
        *TINY,
        "--task",
        "detection",
        expect=2,
    )
    assert "pass --task segmentation" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last_paths_run(synth_det, tmp_path, amp):
    # The CUDA recipe uses autocast + channels_last; CPU autocast exercises the same code path
    # (fp16 also goes through the GradScaler). Numbers on a GPU are for the benchmarks.
    out = tmp_path / f"{amp}.pt"
    _train(
        synth_det,
        out,
        "--task",
        "detection",
        "iterations=2",
        f"amp={amp}",
        "channels_last=true",
        "device=cpu",
    )
    ck = load_checkpoint(out)
    assert all(torch.isfinite(v).all() for v in ck["weights"].values() if v.is_floating_point())


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resumable(synth_det, tmp_path):
    """The first resume checkpoint lands on a full disk (its temp file is /dev/full, which
    fails every write with ENOSPC): one line that says to free space and resume; no
    ``*.resume.tmp`` left; once there is space, --resume finishes the run."""
    out = tmp_path / "t.pt"
    (tmp_path / "t.pt.resume.tmp").symlink_to("/dev/full")
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(out),
        *TINY,
        "--task",
        "detection",
        "iterations=12",
        expect=2,
    )
    (line,) = err.strip().splitlines()
    assert "t.pt.resume: cannot write the checkpoint: no space left" in line
    assert "then rerun with --resume" in line
    assert not list(tmp_path.glob("*.tmp")) and not out.exists()
    _train(synth_det, out, "--task", "detection", "iterations=12")
    assert load_checkpoint(out)["iteration"] == 12


@pytest.mark.parametrize(
    "override, msg",
    [
        ("iterations=-5", "'iterations': -5 must be >= 0"),
        ("lr=-1", "'lr': -1 must be > 0"),
        ("lr=nan", "'lr': nan is not a finite number"),
        ("batch_size=0", "'batch_size': 0 must be >= 1"),
        ("width=0", "'width': 0 must be > 0"),
    ],
)
def test_out_of_range_config_is_refused_before_any_work(synth_det, tmp_path, override, msg):
    out = tmp_path / "t.pt"
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(out),
        *TINY,
        "--task",
        "detection",
        override,
        expect=2,
    )
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written, not even the config


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_preset_on_a_cpu_machine_names_device_cpu(synth_det, tmp_path):
    err = run_cli(
        "train-teacher",
        "--data",
        str(synth_det),
        "--out",
        str(tmp_path / "t.pt"),
        "--preset",
        "gpu-full",
        "--task",
        "detection",
        "progress=false",
        expect=2,
    )
    (line,) = err.strip().splitlines()
    assert "device=cuda, but this machine has no usable CUDA" in line
    assert "pass device=cpu" in line and not list(tmp_path.iterdir())


def test_added_fields_are_the_defaults_of_the_training_configs():
    """A resume file from before a field existed is read as that field's default: the
    table must hold each config's default, or such files would resume as another run."""
    from md.config import config_to_dict
    from md.student_train.config import StudentTrainConfig
    from md.teacher_train.run import TeacherTrainConfig
    from md.train.loop import ADDED_FIELDS

    seen = set()
    for cls in (StudentTrainConfig, TeacherTrainConfig):
        d = config_to_dict(cls())
        for k, v in ADDED_FIELDS.items():
            if k in d:
                assert d[k] == v, (cls.__name__, k)
                seen.add(k)
    assert seen == set(ADDED_FIELDS)


def test_seg_foreground_any_goes_into_the_checkpoint_and_default_leaves_it_out(
    synth_seg, synth_det, tmp_path
):
    seg = ("--task", "segmentation", "iterations=2")
    _train(synth_seg, tmp_path / "any.pt", *seg, "seg_foreground=any")
    _train(synth_seg, tmp_path / "frac.pt", *seg)
    any_ck, frac_ck = load_checkpoint(tmp_path / "any.pt"), load_checkpoint(tmp_path / "frac.pt")
    assert any_ck["model_args"]["seg_foreground"] == "any"
    assert "seg_foreground" not in frac_ck["model_args"]  # older checkpoints: the same args
    model, _ = load_model(tmp_path / "any.pt")
    assert model.seg_foreground == "any"
    # The targets differ, so the weights after two steps do (same seed, same batches).
    wa, wf = any_ck["weights"], frac_ck["weights"]
    assert any(not torch.equal(wa[k], wf[k]) for k in wa if k.startswith("gaff."))
    err = run_cli(
        "train-teacher", "--data", str(synth_det), "--out", str(tmp_path / "d.pt"), *TINY,
        "seg_foreground=any", expect=2,
    )  # fmt: skip
    assert "seg_foreground=any is for GAFF segmentation teachers" in err
    assert len(err.strip().splitlines()) == 1
