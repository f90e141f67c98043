"""Progress bars that read well both on a terminal and in a log file.

tqdm redraws its bar up to ten times a second. On a terminal each redraw overwrites the last
one; in a file (`make demo > log 2>&1`, a batch job's output) every redraw is kept, so the log
is mostly bar lines. `progress_bar` keeps tqdm's defaults on a terminal and, anywhere else,
writes at most one update per `LOG_INTERVAL_S` seconds (plus the first and the last).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

# Seconds between two updates when the bar's file is not a terminal: a 5-minute run leaves
# about ten lines, a 10-hour GPU run about 1,200, and a stalled run shows within a minute.
LOG_INTERVAL_S = 30.0


def is_terminal(file: IO[str] | Any) -> bool:
    """Whether `file` is an interactive terminal (False for files, pipes, StringIO, closed)."""
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        return False


def progress_bar(**kwargs: Any) -> tqdm:
    """`tqdm(**kwargs)`, updating at most every `LOG_INTERVAL_S` s when not on a terminal.

    Both intervals are raised: tqdm's monitor thread forces a redraw once `maxinterval`
    (10 s by default) has passed, so `mininterval` alone would not thin the updates.
    Explicit `mininterval` / `maxinterval` arguments win.
    """
    file = kwargs.get("file") or sys.stderr
    if not is_terminal(file):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    return tqdm(**kwargs)
