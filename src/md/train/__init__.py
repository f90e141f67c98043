"""Training machinery shared by `md train-teacher` (`md.teacher_train`) and `md train-student`
(`md.student_train`); the commands themselves live in those packages.

`recipe` holds the MD §4.2 optimiser and schedule and the configs both commands inherit,
`checkpoint` the atomic checkpoint writer (the format: `md.models.checkpoint`), `metrics_log`
the JSONL log and loss-curve figure, `loop` the resumable training loop, `distributed` the
DDP pieces, `sampling` the iteration-indexed batch sampler.
"""
