from dataclasses import dataclass
from typing import Literal

import pytest

from md.config import load_yaml, resolve_config, save_config
from md.errors import ConfigError


@dataclass(frozen=True)
class Cfg:
    iterations: int = 10
    lr: float = 0.01
    levels: tuple[str, ...] = ("c3", "c4", "c5")
    amp: Literal["none", "bf16"] = "none"
    hflip: bool = True
    name: str = "x"


PRESETS = {"tiny": {"iterations": 2, "lr": 0.1}}


def test_precedence_preset_file_option_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iterations: 5\nname: fromfile\n")
    cfg = resolve_config(
        Cfg,
        presets=PRESETS,
        preset="tiny",
        config_file=f,
        overrides=["levels=c3,c5", "hflip=false"],
        name="option",
    )
    assert cfg == Cfg(iterations=5, lr=0.1, levels=("c3", "c5"), hflip=False, name="option")
    assert resolve_config(Cfg, overrides=["iterations=7", "name=option"]).iterations == 7


def test_yaml_list_and_types():
    cfg = resolve_config(Cfg, overrides=["levels=[c4]", "lr=1e-3", "amp=bf16", "iterations=3.0"])
    assert cfg.levels == ("c4",) and cfg.lr == pytest.approx(1e-3) and cfg.amp == "bf16"
    assert cfg.iterations == 3 and isinstance(cfg.iterations, int)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (["iterations=2.5"], "integer"),
        (["amp=fp8"], "not one of"),
        (["nope=1"], "unknown config key"),
        (["iterations"], "key=value"),
        (["hflip=maybe"], "true/false"),
    ],
)
def test_bad_overrides_are_clear(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_config(Cfg, overrides=bad)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="available: tiny"):
        resolve_config(Cfg, presets=PRESETS, preset="big")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        resolve_config(Cfg, config_file=bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_saved_config_loads_back(tmp_path):
    cfg = resolve_config(Cfg, overrides=["levels=c5", "lr=0.5"])
    save_config(cfg, tmp_path / "c.yaml")
    assert resolve_config(Cfg, config_file=tmp_path / "c.yaml") == cfg


def test_every_preset_of_every_command_is_in_range():
    """The limits refuse bad values, never a shipped preset or default."""
    from md.config import check_limits
    from md.student_train import PRESETS as STUDENT
    from md.student_train import StudentTrainConfig
    from md.teacher_cache.run import CacheConfig
    from md.teacher_train import PRESETS as TEACHER
    from md.teacher_train import TeacherTrainConfig

    check_limits(CacheConfig())
    for cls, presets in ((TeacherTrainConfig, TEACHER), (StudentTrainConfig, STUDENT)):
        check_limits(cls())
        for name in presets:
            resolve_config(cls, presets=presets, preset=name)


@pytest.mark.parametrize(
    "override, msg",
    [
        ("batch_size=0", "'batch_size': 0 must be >= 1"),
        ("lr=-1", "'lr': -1 must be > 0"),
        ("lr=.inf", "'lr': inf is not a finite number"),
        ("momentum=1", "'momentum': 1 must be >= 0 and < 1"),
        ("window_shards=0", "'window_shards': 0 must be >= 1"),
        ("class_weights=[1,-2]", "'class_weights': -2 must be > 0"),
        ("semantic_weight=-0.5", "'semantic_weight': -0.5 must be >= 0"),
    ],
)
def test_student_limits_are_checked_when_the_config_loads(override, msg):
    from md.student_train import StudentTrainConfig

    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        resolve_config(StudentTrainConfig, overrides=[override])


def test_cache_limits_are_checked_by_run_too(tmp_path):
    """API callers that build the dataclass themselves get the same refusal."""
    from md.teacher_cache.run import CacheConfig, run

    with pytest.raises(ConfigError, match="'max_queued': 0 must be >= 1"):
        run(CacheConfig(teacher="t.pt", data="d", store=str(tmp_path / "s"), max_queued=0))
