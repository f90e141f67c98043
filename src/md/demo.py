"""`md demo`: the whole MD pipeline on synthetic data, ending in DIR/report.md.

run(cfg) reads top to bottom: synthetic data -> GAFF teacher -> `cache-teacher` (train split
for the students, test split for the figures) -> native and MD students for each thermal
factor (`md.tables`, through the real CLI) -> evaluation -> figures -> report.md.

Detection (KAIST layout) by default; ``task="segmentation"`` runs the MFNet-layout path.
Steps whose outputs exist are skipped, so an interrupted demo resumes. On a GPU every step
uses it (``device=auto`` throughout).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from md import tables
from md.config import resolve_config
from md.stores.schema import attention_name, features_name

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Size:
    """How big each stage is: `default` (~10 min on 2 CPU cores) or `quick` (a minute or two)."""

    n_train: int
    n_test: int
    image: tuple[int, int] | None  # (W, H); None: the synthetic default (160x128 detection)
    teacher_preset: str
    teacher_overrides: tuple[str, ...]
    student_preset: str
    student_overrides: tuple[str, ...]


SIZES = {
    "default": Size(64, 32, None, "cpu-demo", (), "cpu-demo", ("iterations=200",)),
    "quick": Size(
        32,
        16,
        (96, 64),
        "cpu-tiny",
        ("iterations=30",),
        "cpu-tiny",
        ("iterations=10", "log_every=1"),
    ),
}


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo"  # output folder (data, teacher, stores, students, figures, report.md)
    quick: bool = False  # the tiny sizes of SIZES["quick"] (used by the test)
    task: Literal["detection", "segmentation"] = "detection"
    seeds: tuple[int, ...] = (0,)  # student seeds; the table shows mean ± SE over them
    factors: tuple[str, ...] = tables.FACTORS  # thermal pixel factors; none = visible-only
    workers: int = 2  # students trained at once (each one torch thread)
    figure_samples: int = 2  # day and night test samples each in the Fig. 4-like grid


def run(cfg: DemoConfig, echo: Echo = print) -> dict[str, Any]:
    """Run the demo; returns {"report": path, "seconds": {...}}."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    size = SIZES["quick" if cfg.quick else "default"]
    t: dict[str, float] = {}
    data = _stage("1/6 synthetic data", t, echo, lambda: make_data(cfg, size, out / "data"))
    teacher = _stage("2/6 teacher", t, echo, lambda: train_teacher(cfg, size, data, out))
    stores = _stage(
        "3/6 cache-teacher (train + test splits, lossless)",
        t,
        echo,
        lambda: cache_splits(teacher, data, out),
    )
    camp = tables.Campaign(
        data={cfg.task: data},
        store={cfg.task: stores["train"]},
        out_dir=out / "runs",
        preset=size.student_preset,
        common=("progress=false", *size.student_overrides),
        workers=cfg.workers,
    )
    _stage(
        f"4/6 students: native + MD x thermal factors {', '.join(cfg.factors)}",
        t,
        echo,
        lambda: tables.run_grid(
            camp,
            tables.md_grid([cfg.task], cfg.factors, cfg.seeds),
            echo=lambda s: echo(f"    {s}"),
        ),
    )
    teacher_eval = _stage(
        "5/6 evaluating the teacher", t, echo, lambda: evaluate_teacher(teacher, data)
    )
    records = tables.load_results(camp.results)
    figs = _stage(
        "6/6 figures and report",
        t,
        echo,
        lambda: {
            "factor": factor_figure(records, cfg.task, cfg.factors, teacher_eval, out),
            "fig4": fig4_grid(records, cfg, data, stores["test"], out),
            "loss": loss_figure(records, cfg.task, teacher, out),
        },
    )
    report = write_report(cfg, size, records, teacher_eval, stores, figs, t, out)
    if cfg.quick:
        echo(f"note: {quick_caveat(size)}")
    echo(f"report: {report}")
    return {"report": str(report), "seconds": t}


def _stage(title: str, timings: dict[str, float], echo: Echo, fn: Callable[[], Any]) -> Any:
    echo(f"[{title}] ...")
    t0 = time.perf_counter()
    result = fn()
    timings[title.split(" ", 1)[1]] = round(time.perf_counter() - t0, 1)
    echo(f"[{title}] done in {timings[title.split(' ', 1)[1]]:.1f} s")
    return result


def make_data(cfg: DemoConfig, size: Size, root: Path) -> str:
    """`md data synth` into root (skipped when it is already there)."""
    from md.data.synthetic import SynthConfig
    from md.data.synthetic import run as synth

    if not (root / "synthetic.json").exists():
        synth(
            SynthConfig(
                cfg.task, n_train=size.n_train, n_test=size.n_test, size=size.image, seed=0
            ),
            root,
        )
    return str(root)


def train_teacher(cfg: DemoConfig, size: Size, data: str, out: Path) -> str:
    """`md train-teacher` (GAFF) at the size's preset (skipped when teacher.pt exists)."""
    import md.teacher_train as tt

    path = out / "teacher.pt"
    if not path.exists():
        tcfg = resolve_config(
            tt.TeacherTrainConfig,
            presets=tt.PRESETS,
            preset=size.teacher_preset,
            overrides=size.teacher_overrides,
            task=cfg.task,
            data=data,
        )
        tt.run(tcfg, out=path)
    return str(path)


def cache_splits(teacher: str, data: str, out: Path) -> dict[str, str]:
    """Lossless stores of the train split (for the students) and the test split (figures);
    a finished store is left as it is (cache-teacher resumes / no-ops)."""
    from md.teacher_cache.run import CacheConfig
    from md.teacher_cache.run import run as cache

    stores = {}
    for split in ("train", "test"):
        stores[split] = str(out / f"{split}.zarr")
        cache(
            CacheConfig(
                teacher=teacher, data=data, split=split, store=stores[split], codec="lossless"
            )
        )
    return stores


def evaluate_teacher(teacher: str, data: str) -> dict[str, Any]:
    from md.eval.model_eval import evaluate_model

    return evaluate_model(teacher, data, split="test")


def _teacher_row(task: str, ev: dict[str, Any]) -> str:
    metric = ev["miss_rate"] if task == "detection" else ev["mean_accuracy"]
    cells = " | ".join(
        "–" if metric.get(s) is None else f"{metric[s]:.2f}" for s in ("day", "night", "all")
    )
    return f"| Teacher (two-stream GAFF, full-res thermal) | | {cells} | 1 |"


def _store_line(stores: dict[str, str]) -> str:
    from md.stores.info import info

    rep = info(stores["train"])
    total = rep["bytes_per_sample"]["total"]
    ratio = rep["ratio_vs_float32"].get("total")
    vs = f", {ratio:.2f}x smaller than float32" if ratio else ""
    codec = rep["codec"]["name"] if isinstance(rep["codec"], dict) else rep["codec"]
    return (
        f"Teacher store ({codec}, {rep['written']} train samples): "
        f"**{total:,.0f} bytes/sample**{vs}."
    )


def quick_caveat(size: Size) -> str:
    """Why a `--quick` table says nothing about MD: its students barely train."""
    return (
        f"--quick numbers are a smoke test: {size.n_train} training images, a "
        f"{_iterations(size.teacher_overrides)}-iteration teacher and "
        f"{_iterations(size.student_overrides)}-iteration students show that every stage "
        "runs, but are far too undertrained to compare native with MD students. "
        "Run `md demo` without --quick for the real table."
    )


def _iterations(overrides: tuple[str, ...]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("iterations=")), "?")


def write_report(
    cfg: DemoConfig,
    size: Size,
    records: list[dict[str, Any]],
    teacher_eval: dict[str, Any],
    stores: dict[str, str],
    figs: dict[str, Path],
    timings: dict[str, float],
    out: Path,
) -> Path:
    """Write report.md (see `report_text`)."""
    path = out / "report.md"
    path.write_text(
        report_text(cfg, size, records, teacher_eval, _store_line(stores), figs, timings)
    )
    return path


def report_text(
    cfg: DemoConfig,
    size: Size,
    records: list[dict[str, Any]],
    teacher_eval: dict[str, Any],
    store_line: str,
    figs: dict[str, Path],
    timings: dict[str, float],
) -> str:
    """report.md: the Table 3/4-shaped table first (under the smoke-test caveat for
    --quick), then the figures, then how it was made."""
    better = "lower is better" if cfg.task == "detection" else "higher is better"
    errors = [r for r in records if "error" in r]
    lines = [
        f"# MD demo: {cfg.task} on synthetic data{' (--quick)' if cfg.quick else ''}",
        "",
        *([f"> **Not a result.** {quick_caveat(size)}", ""] if cfg.quick else []),
        f"Native vs MD students per thermal resolution ({better}; test split, "
        f"{len(cfg.seeds)} seed(s), mean ± SE when several).",
        "",
        tables.thermal_table(records, cfg.task, cfg.factors),
        _teacher_row(cfg.task, teacher_eval),
        "",
        store_line,
        "",
        *(f"- failed: {r['key']}: {r['error']}" for r in errors),
        "## Figures",
        "",
        f"![metric vs thermal factor]({figs['factor'].name})",
        "",
        "Visible, thermal (as the student sees it), teacher mask, student mask and the F-MSE "
        "weight map (MD Fig. 4) for day and night test samples:",
        "",
        f"![MD Fig. 4-like grid]({figs['fig4'].name})",
        "",
        f"![training loss curves]({figs['loss'].name})",
        "",
        "## How this was made",
        "",
        f"- data: `md data synth --task {cfg.task}` ({size.n_train} train + {size.n_test} test"
        f"{f', {size.image[0]}x{size.image[1]}' if size.image else ''})",
        f"- teacher: `md train-teacher --preset {size.teacher_preset} "
        f"{' '.join(size.teacher_overrides)}`",
        "- stores: `md cache-teacher --codec lossless` (train and test splits)",
        f"- students: `md train-student --preset {size.student_preset} "
        f"{' '.join(size.student_overrides)}` (native: `--no-distill`), then "
        "`md evaluate model`",
        f"- seconds per stage: `{json.dumps(timings)}`",
    ]
    return "\n".join(lines) + "\n"


# --- figures ---------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path)
    _plt().close(fig)
    return path


def factor_figure(
    records: list[dict[str, Any]],
    task: str,
    factors: tuple[str, ...],
    teacher_eval: dict[str, Any],
    out: Path,
) -> Path:
    return _save(
        factor_plot(records, task, factors, teacher_eval), out / "metric_vs_thermal_factor.png"
    )


def factor_plot(
    records: list[dict[str, Any]], task: str, factors: tuple[str, ...], teacher_eval: dict[str, Any]
) -> Any:
    """The metric (all / day / night) against thermal factor, native vs MD, teacher dashed."""
    plt = _plt()
    metric = "miss_rate" if task == "detection" else "mean_accuracy"
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100, sharey=True)
    xs = list(range(len(factors)))
    shown: list[float] = []
    for ax, subset in zip(axes, ("all", "day", "night"), strict=True):
        for variant, style in (("native", "o-"), ("md", "s-")):
            ys = []
            for f in factors:
                agg = tables.aggregate(records, task, f, variant)
                ys.append(agg[subset][0] if agg and subset in agg else float("nan"))
            ax.plot(xs, ys, style, label="MD" if variant == "md" else "native")
            shown += ys
        if teacher_eval[metric].get(subset) is not None:
            ax.axhline(teacher_eval[metric][subset], color="gray", ls="--", label="teacher")
            shown.append(teacher_eval[metric][subset])
        ax.set_xticks(xs, [f"{f}x" if f != "none" else "visible\nonly" for f in factors])
        ax.set_title(subset)
        ax.set_xlabel("thermal pixel factor")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(*percent_limits(shown))  # shared by the three panels
    axes[0].set_ylabel("miss rate (%) ↓" if task == "detection" else "mean accuracy (%) ↑")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def percent_limits(
    values: list[float], margin: float = 0.1, least: float = 1.0, headroom: float = 0.04
) -> tuple[float, float]:
    """y-limits of a percentage plot: the values' range widened by `margin` of it (at least
    `least` points each side) and cut to [0, 100], where the metric is defined; then
    `headroom` of that span either side, so a line at 0 or 100 stays off the frame.

    The axis follows the data rather than starting at 0: MD's miss rates differ by a few
    points around 20-40 %, which a 0-100 axis would squeeze into a band. Cutting at 0 and
    100 keeps ticks of values a miss rate or an accuracy cannot take (102, 104, ...) off the
    axis: the headroom is smaller than a tick step (matplotlib puts at most ~10 ticks on it).
    """
    finite = [v for v in values if v == v]  # drop NaN (cells not run)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 100.0)
    pad = max(margin * (hi - lo), least)
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    return lo - headroom * (hi - lo), hi + headroom * (hi - lo)


def _figure_student(records: list[dict[str, Any]], factors: tuple[str, ...]) -> dict[str, Any]:
    """The MD student shown in the Fig. 4 grid: 16x if trained, else the first MD factor."""
    md = [r for r in records if r.get("variant") == "md" and "error" not in r]
    if not md:
        raise RuntimeError("no MD student finished; see the failures in the report")
    return next((r for r in md if r["factor"] == "16"), md[0])


def _fig4_rows(
    records: list[dict[str, Any]], cfg: DemoConfig, data: str, test_store: str
) -> tuple[list[dict[str, Any]], str, str]:
    """Per chosen test sample: images and maps of the first distilled level."""
    import numpy as np
    import torch

    from md.data import collate, open_dataset
    from md.eval.model_eval import default_thermal_factor, model_inputs
    from md.models import load_model
    from md.stores import open_store
    from md.student_train.losses import FocalMSELoss

    rec = _figure_student(records, cfg.factors)
    model, ckpt = load_model(rec["checkpoint"])
    tf = default_thermal_factor(ckpt)
    level = str(model.levels[0])  # type: ignore[index]
    ds = open_dataset(data, split="test")
    store = open_store(test_store)
    groups = store.read(np.arange(store.n), ["group"])["group"]
    picks = [
        int(i) for g in ("day", "night") for i in np.flatnonzero(groups == g)[: cfg.figure_samples]
    ]
    rows = []
    for i in picks:
        batch = collate([ds[i]])
        (x,) = model_inputs(model, "student", batch, tf)
        with torch.inference_mode():
            s = model(x, side_outputs=True)
        t = store.read([i], [features_name(level), attention_name(level)])
        t_feat = torch.from_numpy(t[features_name(level)])  # (1, C, h, w)
        weights = FocalMSELoss().weights(s["features"][level], t_feat)[0]  # (h, w)
        rows.append(
            {
                "group": str(groups[i]),
                "visible": batch["visible"][0].permute(1, 2, 0),
                "thermal": x[0, 3] if x.shape[1] == 6 else None,
                "teacher": t[attention_name(level)][0, 0],
                "student": s["masks"][level][0, 0],
                "weights": weights,
            }
        )
    store.close()
    return rows, level, str(rec["factor"])


def fig4_grid(
    records: list[dict[str, Any]], cfg: DemoConfig, data: str, test_store: str, out: Path
) -> Path:
    """Like MD Fig. 4: visible, thermal, teacher mask, student mask, F-MSE weight map."""
    rows, level, factor = _fig4_rows(records, cfg, data, test_store)
    return _save(fig4_plot(rows, level, factor), out / "fig4_masks.png")


FIG4_COLUMNS = (  # row key, title, colour map, colour bar label
    ("visible", "visible", None, None),
    ("thermal", "thermal ({factor}x)", "inferno", "student input"),
    ("teacher", "teacher mask {level}", "viridis", "mask"),
    ("student", "student mask {level}", "viridis", "mask"),
    ("weights", "F-MSE weights {level}", "viridis", "weight"),
)


def fig4_plot(rows: list[dict[str, Any]], level: str, factor: str) -> Any:
    """One row per sample, one column per FIG4_COLUMNS entry; every map has its colour bar,
    so its colours can be read as values (the masks share the fixed [0, 1] scale, so teacher
    and student compare by eye; thermal and weights span their own range)."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 5, figsize=(13, 2.2 * len(rows)), dpi=100, squeeze=False)
    for r, row in enumerate(rows):
        for c, (key, title, cmap, bar_label) in enumerate(FIG4_COLUMNS):
            ax = axes[r][c]
            ax.axis("off")
            if r == 0:
                ax.set_title(title.format(factor=factor, level=level), fontsize=9)
            if row[key] is None:  # no thermal input for a visible-only student
                continue
            img = row[key].numpy() if hasattr(row[key], "numpy") else row[key]
            kw: dict[str, Any] = {} if cmap is None else {"cmap": cmap}
            if key in ("teacher", "student"):  # masks lie in [0, 1]
                kw.update(vmin=0.0, vmax=1.0)
            shown = ax.imshow(img, **kw)
            if bar_label is not None:
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
                bar.ax.tick_params(labelsize=7)
                bar.set_label(bar_label, fontsize=7)
        axes[r][0].text(
            -0.05,
            0.5,
            row["group"],
            transform=axes[r][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=9,
        )
    fig.tight_layout()
    return fig


def loss_figure(records: list[dict[str, Any]], task: str, teacher: str, out: Path) -> Path:
    return _save(loss_plot(records, teacher), out / "loss_curves.png")


def loss_plot(records: list[dict[str, Any]], teacher: str) -> Any:
    """Training loss: the teacher's total, and the students' task loss (native dashed, MD
    solid), in the table's order (thermal factor 1, 4, 16, 64, visible-only; native first)
    on a log axis (the first iterations' loss would flatten the rest on a linear one)."""
    from md.train.metrics_log import read_log

    plt = _plt()
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12.5, 3.8), dpi=100)
    _curve(ax_t, read_log(Path(teacher).with_suffix(".metrics.jsonl")), "loss/total", "teacher")
    ax_t.set_title("teacher (GAFF)")
    done = sorted((r for r in records if "error" not in r), key=_table_order)
    several_seeds = len({r.get("seed") for r in done}) > 1
    colour = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(r["factor"] for r in done))}
    for r in done:  # one colour per thermal factor: its native and MD curves side by side
        log = read_log(Path(r["checkpoint"]).with_suffix(".metrics.jsonl"))
        label = student_label(r) + (f" s{r['seed']}" if several_seeds else "")
        style = "-" if r["variant"] == "md" else "--"
        _curve(
            ax_s,
            log,
            "loss/task" if r["variant"] == "md" else "loss/total",
            label,
            style,
            colour[r["factor"]],
        )
    ax_s.set_title("students: task loss (MD: without the transfer terms)")
    for ax in (ax_t, ax_s):
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if ys:  # ten students' entries would hide their curves: theirs go to the right
            ax.legend(
                fontsize=7,
                **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if ax is ax_s else {}),
            )
    fig.tight_layout()
    return fig


def student_label(rec: dict[str, Any]) -> str:
    """The table's words for a student: `native 16x`, `MD 16x`, `MD visible-only`."""
    variant = "MD" if rec["variant"] == "md" else rec["variant"]
    return f"{variant} {rec['factor']}x" if rec["factor"] != "none" else f"{variant} visible-only"


def _table_order(rec: dict[str, Any]) -> tuple[float, int, str, int]:
    """Thermal factor as a number (visible-only last), native before MD, then the seed."""
    factor = math.inf if rec["factor"] == "none" else float(rec["factor"])
    variant = {"native": 0, "md": 1}.get(rec["variant"], 2)
    return factor, variant, rec["variant"], int(rec.get("seed", 0))


def _curve(
    ax: Any,
    log: list[dict[str, Any]],
    key: str,
    label: str,
    style: str = "-",
    colour: str | None = None,
) -> None:
    pts = [(r["iteration"], r[key]) for r in log if key in r]
    if pts:
        ax.plot(*zip(*pts, strict=True), style, label=label, lw=1.2, color=colour)
