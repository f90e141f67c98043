"""`md predict`: a model on camera frames, with the thermal health check and a backup."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Dataset root (KAIST or MFNet layout): predict the frames of one split.",
)
@click.option("--split", default="test", show_default=True, help="Split of --data.")
@click.option(
    "--visible",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="One visible image (with --thermal).",
)
@click.option(
    "--thermal",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Its thermal image (8/16-bit gray PNG, or .npy), low-resolution or full size.",
)
@click.option(
    "--visible-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of visible images (with --thermal-dir; paired by file name).",
)
@click.option(
    "--thermal-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of thermal frames named like the visible ones.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="New (or empty) output folder; it appears complete or not at all.",
)
@click.option(
    "--fallback",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Visible-only student (md train-student --thermal-factor none) that serves the "
    "frames whose thermal is unhealthy. Without it those frames are reported, not predicted.",
)
@click.option(
    "--overlays",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Draw the predictions of the first N frames into OUT/overlays/.",
)
@click.option(
    "--overlay-score",
    type=click.FloatRange(min=0, max=1),
    default=0.3,
    show_default=True,
    help="Detections from this score are drawn on the overlays.",
)
@click.option(
    "--frozen-k",
    type=click.IntRange(min=2),
    default=3,
    show_default=True,
    help="Identical thermal frames in a row that make a frozen stream.",
)
@click.option(
    "--min-std",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Thermal std (grey levels of 255) below which a frame is dead.",
)
@click.option(
    "--saturated",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.5,
    show_default=True,
    help="Share of pixels at full scale that makes a frame saturated.",
)
@click.option(
    "--no-health-check",
    is_flag=True,
    help="Serve every frame with MODEL whatever its thermal (missing thermal: zeros); "
    "for measuring what the check prevents.",
)
@click.option(
    "--simulate-failures",
    type=click.FloatRange(min=0, max=0.9),
    default=0.0,
    help="Break the thermal of this share of frames (seeded; blocks of 4 frames dead, "
    "missing or frozen) to measure the fallback.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --simulate-failures.")
@click.option(
    "--score",
    is_flag=True,
    help="With --data: also compute the metric of md evaluate model over all frames.",
)
@click.option(
    "--shadow",
    is_flag=True,
    help="With --fallback: the backup also predicts the healthy frames (not served) and the "
    "summary gives the two models' agreement on them.",
)
@click.option(
    "--agree-score",
    type=click.FloatRange(min=0, max=1),
    default=0.3,
    show_default=True,
    help="Detections from this score count in the --shadow agreement.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def predict(
    model: Path,
    data: Path | None,
    split: str,
    visible: Path | None,
    thermal: Path | None,
    visible_dir: Path | None,
    thermal_dir: Path | None,
    out: Path,
    fallback: Path | None,
    overlays: int,
    overlay_score: float,
    frozen_k: int,
    min_std: float,
    saturated: float,
    no_health_check: bool,
    simulate_failures: float,
    seed: int,
    score: bool,
    shadow: bool,
    agree_score: float,
    batch_size: int,
    device: str,
    as_json: bool,
) -> None:
    """Run MODEL (a .pt checkpoint or an exported file) on camera frames.

    Detection: OUT/results.txt (KAIST results; md evaluate kaist-results) and
    OUT/frames.jsonl; segmentation: OUT/pred/*.png (MFNet palette) and OUT/frames.jsonl.
    Every frame's record says its thermal health and which model served it.
    """
    from md.deploy.health import HealthConfig
    from md.deploy.predict import PredictConfig, run

    cfg = PredictConfig(
        model=str(model),
        out=str(out),
        data=None if data is None else str(data),
        split=split,
        visible=None if visible is None else str(visible),
        thermal=None if thermal is None else str(thermal),
        visible_dir=None if visible_dir is None else str(visible_dir),
        thermal_dir=None if thermal_dir is None else str(thermal_dir),
        fallback=None if fallback is None else str(fallback),
        overlays=overlays,
        overlay_score=overlay_score,
        batch_size=batch_size,
        device=device,
        health=HealthConfig(min_std=min_std, saturated_fraction=saturated, frozen_k=frozen_k),
        check_health=not no_health_check,
        simulate_failures=simulate_failures,
        seed=seed,
        score=score,
        shadow=shadow,
        agree_score=agree_score,
        progress=not as_json,
    )
    from md.audit import audited

    given = {"model": model, "fallback": fallback, "data": data, "visible": visible}
    given.update(thermal=thermal, visible_dir=visible_dir, thermal_dir=thermal_dir)
    with audited(
        "predict",
        {k: v for k, v in given.items() if v is not None},
        {"out": out, "frames": out / "frames.jsonl"},
    ):
        summary = run(cfg)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    served = summary["served"]
    bad = {k: v for k, v in summary["health"].items() if k != "ok"}
    unhealthy = ", ".join(f"{v} {k}" for k, v in sorted(bad.items())) or "none"
    if "metric" in summary:
        m = summary["metric"]
        key = "miss_rate" if "miss_rate" in m else "mean_iou"
        click.echo(f"{key}: " + "  ".join(f"{s} {m[key].get(s)}" for s in ("all", "day", "night")))
    if summary.get("agreement"):
        a = summary["agreement"]
        click.echo(f"agreement with the fallback on {a['frames']} healthy frames: {a['value']}")
    click.echo(
        f"{summary['frames']} frames in {summary['seconds']:.2f} s, "
        f"{summary['frames_per_s']} frames/s: {served.get('primary', 0)} by {model.name}, "
        f"{served.get('fallback', 0)} by the fallback, {served.get('none', 0)} not predicted "
        f"(unhealthy thermal: {unhealthy}) -> {summary['out']}"
    )
