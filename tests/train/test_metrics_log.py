"""The per-run loss plot beside every checkpoint names its run."""

from __future__ import annotations

from pathlib import Path

from md.train.metrics_log import MetricsLog, plot_loss_curves, run_name


def test_loss_plot_is_titled_with_the_run_name(tmp_path: Path) -> None:
    # The demo's ten students share one description (student[offline/detection]); only the
    # checkpoint's name tells the plots apart.
    log_path = tmp_path / "detection_md_tf16_s0.metrics.jsonl"
    log = MetricsLog(log_path)
    for it, total in enumerate([9.0, 5.0, 3.0]):
        log.write({"iteration": it, "lr": 0.01, "loss/total": total, "loss/task": total / 2})
    png = tmp_path / "detection_md_tf16_s0.loss.png"
    fig = plot_loss_curves(log_path, png, title="student[offline/detection]")
    (ax,) = fig.axes
    assert ax.get_title() == "detection_md_tf16_s0 (student[offline/detection])"
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["total", "task"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert run_name(tmp_path / "teacher.metrics.jsonl") == "teacher"
