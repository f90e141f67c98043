"""The JSONL metrics log written beside every checkpoint, and its loss-curve figure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class MetricsLog:
    """Append-only JSONL; one record per logged iteration (`{"iteration": i, "lr": .., ...}`).

    On resume at iteration k, records with `iteration >= k` are dropped first, so the log of a
    resumed run equals that of an uninterrupted one.
    """

    def __init__(self, path: str | Path, *, resume_from: int | None = None) -> None:
        self.path = Path(path)
        if resume_from is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_log(self.path) if r.get("iteration", -1) < resume_from]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(dict(record)) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def run_name(log_path: str | Path) -> str:
    """`runs/detection_md_tf16_s0.metrics.jsonl` -> `detection_md_tf16_s0` (the checkpoint's
    stem, which names the run: task, variant, thermal factor, seed in `md.tables`)."""
    return Path(log_path).name.removesuffix(".jsonl").removesuffix(".metrics")


def plot_loss_curves(log_path: str | Path, out_png: str | Path, title: str = "") -> Figure:
    """One line per loss part against iteration (log-scale y when all values are positive),
    titled with the run's name and `title` (what kind of run it is); returns the (closed)
    figure so its contents can be checked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log_path) if r.get("kind", "train") == "train"]
    keys = [k for k in (records[0] if records else {}) if k.startswith("loss/")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for k in keys:
        xs = [r["iteration"] for r in records if k in r]
        ys = [r[k] for r in records if k in r]
        ax.plot(xs, ys, label=k.removeprefix("loss/"), lw=1.4 if k == "loss/total" else 1.0)
    if records and all(r[k] > 0 for r in records for k in keys if k in r):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"{run_name(log_path)} ({title})" if title else run_name(log_path))
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return fig
