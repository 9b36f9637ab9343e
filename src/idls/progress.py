"""Progress bars that keep log files small: every progress bar of idls comes from :func:`progress_bar`.

On a terminal a bar is ``tqdm.auto``'s, unchanged: redrawn in place several times a second (in a
Jupyter notebook, tqdm's widget). A redraw is a carriage return followed by the whole bar, so where
the bar's stream is not a terminal (``idls reproduce ... > log 2>&1``, ``nohup``, CI output) every
redraw is appended to the log instead of overwriting the last one, and a long run leaves lines of
thousands of bar states. There a bar redraws at most every :data:`LOG_INTERVAL` seconds: a log gets
the bar's first state, an occasional update and its last one. The environment variable
``IDLS_PROGRESS_INTERVAL`` (seconds, a number >= 0) sets another interval.

Each call site's own options (``desc``, ``unit``, ``total``, ``initial``, ``leave``, ``disable``, ...)
pass to tqdm unchanged: a bar that a call site disables stays disabled, and ``disable=None`` keeps
tqdm's meaning (no bar at all on a stream that is not a terminal). An explicit ``mininterval`` or
``maxinterval`` wins over the log interval.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tqdm itself is imported when the first bar is made
    from tqdm.std import tqdm

#: Seconds between two redraws of a bar whose stream is not a terminal (a log file, a pipe).
LOG_INTERVAL = 30.0
#: The environment variable that replaces :data:`LOG_INTERVAL` (a number of seconds >= 0).
INTERVAL_VARIABLE = "IDLS_PROGRESS_INTERVAL"
# tqdm's default ``maxinterval``: after that long without a redraw, tqdm's monitor thread forces one,
# so it must not be below the log interval.
_TQDM_MAXINTERVAL = 10.0


def log_interval() -> float:
    """The seconds between redraws on a stream that is not a terminal: ``$IDLS_PROGRESS_INTERVAL``,
    else :data:`LOG_INTERVAL`.

    A value that is not a number >= 0 gives a warning and :data:`LOG_INTERVAL` (a progress bar's
    setting never stops a run).
    """
    raw = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not raw:
        return LOG_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        warnings.warn(f"{INTERVAL_VARIABLE}={raw!r} is not a number of seconds >= 0; progress bars redraw "
                      f"every {LOG_INTERVAL:g} s in logs", stacklevel=3)
        return LOG_INTERVAL
    return value


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed or missing streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _is_notebook_bar(bar_class: type) -> bool:
    """Whether ``tqdm.auto`` chose the notebook widget, which draws in the notebook, not on a stream."""
    notebook = sys.modules.get("tqdm.notebook")  # tqdm.auto imports it only inside a notebook kernel
    return notebook is not None and issubclass(bar_class, notebook.tqdm_notebook)


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one, updated with ``bar.update``).

    Args:
        iterable: what the bar iterates over; ``None`` for a bar advanced by ``update``.
        **options: tqdm's keyword arguments (``desc``, ``total``, ``unit``, ``leave``, ``disable``,
            ``file``, ...), passed on unchanged. When the bar's stream (``file``, by default
            ``sys.stderr``) is not a terminal, ``mininterval`` and ``maxinterval`` default to
            :func:`log_interval` so that the bar redraws at most that often.

    Returns:
        The bar (a ``tqdm.std.tqdm`` instance; a context manager and an iterable, as tqdm's are).
    """
    from tqdm.auto import tqdm as auto_tqdm

    stream = options.get("file")
    if stream is None:
        stream = sys.stderr
    if not is_terminal(stream) and not _is_notebook_bar(auto_tqdm):
        interval = log_interval()
        options.setdefault("mininterval", interval)
        options.setdefault("maxinterval", max(interval, _TQDM_MAXINTERVAL))
    return auto_tqdm(iterable, **options)
