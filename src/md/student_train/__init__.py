"""md.student_train: the `md train-student` command, the one-stream MD student distilled from
a teacher-target store (or a live teacher), built on the shared machinery in `md.train`.

`config` holds the config and presets, `resolve` opens and checks the store / data / teacher
and builds everything a run needs (`prepare`), `model` the student and its loss, `run` the run;
`loader` streams the samples, `losses` holds the transfer losses, `provenance` the store checks.
"""

from md.student_train.config import PRESETS, StudentTrainConfig
from md.student_train.resolve import Setup, prepare
from md.student_train.run import StudentRun, run

__all__ = ["PRESETS", "Setup", "StudentRun", "StudentTrainConfig", "prepare", "run"]
