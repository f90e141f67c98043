"""Training machinery shared by `md train-teacher` and `md train-student`.

`recipe` holds the MD §4.2 optimiser and schedule, `checkpoint` the checkpoint format,
`metrics_log` the JSONL log and loss-curve figure, `loop` the resumable training loop.
"""
