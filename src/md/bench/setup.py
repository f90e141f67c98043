"""The inputs a benchmark needs (dataset, teacher, store): the user's, or a tiny synthetic set.

A missing piece is built in `workdir` the way a user would: `md data synth` (96x64: online targets need sides that are multiples of 32, 16 train +
8 test), `md train-teacher --preset cpu-tiny` and `md cache-teacher` (lossless). Untrained
weights do not change timings; the tiny teacher only makes feature statistics realistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from md.config import resolve_config
from md.errors import MdError

Task = Literal["detection", "segmentation"]


@dataclass(frozen=True)
class BenchInputs:
    data: str  # dataset root (KAIST or MFNet layout)
    teacher: str  # teacher checkpoint
    store: str  # teacher-target store of data's train split
    synthetic: bool  # True when built here (tiny), False when all were given


def _check_exists(path: str | None, what: str, option: str) -> None:
    if path and not Path(path).exists() and "://" not in path:
        raise MdError(
            f"{path}: {what} not found; pass an existing {option} or leave it out "
            "to build a tiny synthetic one"
        )


def ensure_setup(
    workdir: str | Path,
    *,
    data: str | None = None,
    teacher: str | None = None,
    store: str | None = None,
    task: Task = "detection",
    size: tuple[int, int] = (96, 64),
    n_train: int = 16,
    n_test: int = 8,
    need_store: bool = True,
    teacher_preset: str = "cpu-tiny",
    teacher_overrides: tuple[str, ...] = (),
) -> BenchInputs:
    """Use the given paths; build what is missing in `workdir` (data -> teacher -> store)."""
    _check_exists(data, "dataset", "--data")
    _check_exists(teacher, "teacher checkpoint", "--teacher")
    _check_exists(store, "store", "--store")
    if (teacher or store) and not data:
        raise MdError("--teacher / --store need the --data they were made from; pass --data DIR")
    work = Path(workdir)
    built = False
    if not data:
        from md.data.synthetic import SynthConfig
        from md.data.synthetic import run as synth

        data = str(work / "data")
        synth(SynthConfig(task, n_train=n_train, n_test=n_test, size=size, seed=0), data)
        built = True
    if not teacher:
        teacher = str(work / "teacher.pt")
        train_tiny_teacher(data, teacher, task, preset=teacher_preset, overrides=teacher_overrides)
        built = True
    if not store and need_store:
        store = str(work / "train.zarr")
        cache(teacher, data, store, "train")
        built = True
    return BenchInputs(data=data, teacher=teacher, store=store or "", synthetic=built)


def train_tiny_teacher(
    data: str,
    out: str,
    task: Task,
    iterations: int = 10,
    preset: str = "cpu-tiny",
    overrides: tuple[str, ...] = (),
) -> None:
    """A `preset` (cpu-tiny) teacher for `iterations` steps (quiet); `overrides` are
    md train-teacher key=value fields (e.g. ``width=1.0``: the paper's teacher)."""
    import md.teacher_train as tt

    cfg = resolve_config(
        tt.TeacherTrainConfig,
        presets=tt.PRESETS,
        preset=preset,
        overrides=[f"iterations={iterations}", *overrides, "progress=false"],
        task=task,
        data=data,
    )
    tt.run(cfg, out=out)


def cache(
    teacher: str, data: str, store: str, split: str, codec: str = "lossless", progress: bool = False
) -> dict:
    """`md cache-teacher` of one split into a fresh store; returns its summary."""
    from md.teacher_cache.run import CacheConfig, run

    return run(
        CacheConfig(
            teacher=teacher,
            data=data,
            split=split,
            store=store,
            codec=codec,  # type: ignore[arg-type]  # a codec name; CacheConfig checks it
            progress=progress,
        )
    )
