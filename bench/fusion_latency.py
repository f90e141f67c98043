"""Batch-1 latency of every fusion stage (MD Tables 1-2 runtime column), interleaved.

    python bench/fusion_latency.py TASK WIDTH HEAD_CHANNELS HEIGHT WIDTH_PX [ROUNDS [MODELS]]
    python bench/fusion_latency.py detection 1.0 128 512 640 5
    python bench/fusion_latency.py detection 1.0 128 512 640 25 \
        "visible-only,visible-only (2nd copy),image-level,image-level (folded stem)"

Builds untrained visible-only, image-level (and the same with its stem folded to 4 input
channels, md.models.fold), MD student, feature-level (GAFF) and decision-level models, plus a
second visible-only copy (the noise floor) (latency does not depend on the weights), times each forward at batch
1 in interleaved rounds (shuffled order) on one CPU thread and prints the medians as JSON. Interleaving makes
the ratios comparable on a shared machine; `md bench latency` times one model at a time.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

import torch

from md.models import build_model, head_kwargs, num_classes
from md.models.fold import fold_image_level


def build(task: str, width: float, head_channels: int) -> dict[str, torch.nn.Module]:
    kw = {
        "width": width,
        "num_classes": num_classes(task),
        "head_kwargs": head_kwargs(task, head_channels),
    }
    image_level = build_model("student", task, in_channels=6, levels=[], **kw)
    return {
        "visible-only": build_model("student", task, in_channels=3, levels=[], **kw),
        "image-level": image_level,
        "image-level (folded stem)": fold_image_level(image_level),
        "md-student": build_model("student", task, in_channels=6, **kw),
        "feature-level (GAFF)": build_model("teacher", task, **kw),
        "decision-level": build_model("decision", task, **kw),
        # A second, identical visible-only model: how far apart two equal models time here
        # (the noise floor of every ratio in this table).
        "visible-only (2nd copy)": build_model("student", task, in_channels=3, levels=[], **kw),
    }


def main(argv: list[str]) -> int:
    task, width, head_channels = argv[0], float(argv[1]), int(argv[2])
    h, w, rounds = int(argv[3]), int(argv[4]), int(argv[5]) if len(argv) > 5 else 15
    torch.set_num_threads(1)
    models = build(task, width, head_channels)
    if len(argv) > 6:  # a comma-separated subset of the model names, e.g. the one-stream ones
        models = {k: m for k, m in models.items() if k in argv[6].split(",")}
    v, t = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
    six = torch.cat([v, t, t, t], 1)
    inputs = {
        "visible-only": (v,),
        "image-level": (six,),
        "md-student": (six,),
        "image-level (folded stem)": (torch.cat([v, t], 1),),
        "feature-level (GAFF)": (v, t),
        "decision-level": (v, t),
        "visible-only (2nd copy)": (v.clone(),),
    }
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for name, model in models.items():
            model.eval()
            for _ in range(3):  # warm-up
                model(*inputs[name])
        order = list(models)
        shuffle = random.Random(0).shuffle  # a fresh order each round: no model always
        for _ in range(rounds):  # follows the same (cache-evicting) one
            shuffle(order)
            for name in order:
                model = models[name]
                t0 = time.perf_counter()
                model(*inputs[name])
                times[name].append((time.perf_counter() - t0) * 1e3)
    print(
        json.dumps(
            {
                "task": task,
                "width": width,
                "size": [w, h],
                "device": "cpu",
                "threads": 1,
                "dtype": "float32",
                "rounds": rounds,
                "median_ms": {k: round(statistics.median(x), 2) for k, x in times.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
