"""Batch-1 latency of every fusion stage (MD Tables 1-2 runtime column), interleaved.

    python bench/fusion_latency.py TASK WIDTH HEAD_CHANNELS HEIGHT WIDTH_PX [ROUNDS]
    python bench/fusion_latency.py detection 1.0 128 512 640 5

Builds untrained visible-only, image-level, MD student, feature-level (GAFF) and
decision-level models (latency does not depend on the weights), times each forward at batch
1 in interleaved rounds on one CPU thread and prints the medians as JSON. Interleaving makes
the ratios comparable on a shared machine; `md bench latency` times one model at a time.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from md.models import build_model
from md.train.teacher import head_kwargs


def build(task: str, width: float, head_channels: int) -> dict[str, torch.nn.Module]:
    kw = {"width": width, "num_classes": 9 if task == "segmentation" else 1,
          "head_kwargs": head_kwargs(task, head_channels)}
    return {
        "visible-only": build_model("student", task, in_channels=3, levels=[], **kw),
        "image-level": build_model("student", task, in_channels=6, levels=[], **kw),
        "md-student": build_model("student", task, in_channels=6, **kw),
        "feature-level (GAFF)": build_model("teacher", task, **kw),
        "decision-level": build_model("decision", task, **kw),
    }


def main(argv: list[str]) -> int:
    task, width, head_channels = argv[0], float(argv[1]), int(argv[2])
    h, w, rounds = int(argv[3]), int(argv[4]), int(argv[5]) if len(argv) > 5 else 15
    torch.set_num_threads(1)
    models = build(task, width, head_channels)
    v, t = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
    six = torch.cat([v, t, t, t], 1)
    inputs = {"visible-only": (v,), "image-level": (six,), "md-student": (six,),
              "feature-level (GAFF)": (v, t), "decision-level": (v, t)}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for name, model in models.items():
            model.eval()
            for _ in range(3):  # warm-up
                model(*inputs[name])
        for _ in range(rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(*inputs[name])
                times[name].append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"task": task, "width": width, "size": [w, h], "device": "cpu",
                      "threads": 1, "dtype": "float32", "rounds": rounds,
                      "median_ms": {k: round(statistics.median(x), 2) for k, x in times.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
