"""`md.progress.progress_bar`: few updates in a log file, tqdm's defaults on a terminal."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import tqdm.std

from md.progress import LOG_INTERVAL_S, is_terminal, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """tqdm's clock, read from a list the test advances: a long run without waiting. The
    monitor thread (real clock) is off, so only `update` decides when to redraw."""
    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    yield now


def redraws(file: io.StringIO, now: list[float], steps: int = 1000) -> int:
    """'\r'-led redraws of a bar over `steps` steps of one (fake) second each."""
    bar = progress_bar(total=steps, file=file, desc="test")
    for _ in range(steps):
        now[0] += 1.0
        bar.update(1)
    bar.close()
    return file.getvalue().count("\r")


def test_a_log_file_gets_an_update_per_interval_not_per_step(clock: list[float]) -> None:
    # 1,000 one-second steps: tqdm's defaults (0.1 s) redraw at every step; one redraw per
    # 30 s leaves the first, ~33 in between and the last: the bar still shows progress.
    count = redraws(io.StringIO(), clock)
    assert 1000 / LOG_INTERVAL_S - 5 <= count <= 1000 / LOG_INTERVAL_S + 5, count


def test_a_terminal_keeps_tqdms_frequent_redraws(clock: list[float]) -> None:
    assert redraws(Terminal(), clock) > 900


def test_explicit_interval_wins_and_terminal_detection() -> None:
    bar = progress_bar(total=1, file=io.StringIO(), mininterval=60.0)
    bar.close()
    assert (bar.mininterval, bar.maxinterval) == (60.0, 60.0)
    assert is_terminal(Terminal()) and not is_terminal(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)
