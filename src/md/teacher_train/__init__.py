"""md.teacher_train: the `md train-teacher` command (the GAFF teacher or the decision-level
baseline), built on the shared training machinery in `md.train`."""

from md.teacher_train.run import PRESETS, TeacherRun, TeacherTrainConfig, run

__all__ = ["PRESETS", "TeacherRun", "TeacherTrainConfig", "run"]
