"""Progress bars: the one helper behind every bar of the package.

``progress_bar(**tqdm_kwargs)`` is ``tqdm.auto.tqdm`` with two rules:

* ``silenced(True)`` (what ``--quiet`` does, for the whole command) disables every bar
  made inside it, including the ones deep in the data loaders (downloads);
* when the bar's stream is not a terminal (a job scheduler's log file, a pipe), it is
  redrawn at most every ``LOG_INTERVAL_S`` seconds, forced redraws (``set_postfix``,
  ``refresh``) included, instead of several times a second: a log file keeps one line per
  interval, not kilobytes of carriage returns. The final state is always written.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterator

from tqdm import std
from tqdm.auto import tqdm as auto_tqdm
from tqdm.autonotebook import tqdm as notebook_tqdm

# Seconds between two redraws of a bar whose stream is not a terminal.
LOG_INTERVAL_S = 30.0

_silenced = False


@contextlib.contextmanager
def silenced(enabled: bool = True) -> Iterator[None]:
    """Within it, ``enabled`` disables every progress bar (a process-wide switch: the
    loaders' bars run in the caller's process, sometimes in a background thread)."""
    global _silenced
    before = _silenced
    _silenced = before or enabled
    try:
        yield
    finally:
        _silenced = before


def is_silenced() -> bool:
    return _silenced


def honours_quiet(run: Callable) -> Callable:
    """Decorates a command's ``run(..., quiet=...)``: its ``quiet`` silences every bar
    made while it runs, the data loaders' download bars included."""
    default = inspect.signature(run).parameters["quiet"].default

    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        with silenced(kwargs.get("quiet", default)):
            return run(*args, **kwargs)

    return wrapped


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _LogBar(std.tqdm):
    """A text bar for a stream that is not a terminal: every redraw, forced or not, waits
    ``mininterval`` seconds after the last one (``close`` still writes the final state)."""

    def refresh(self, nolock=False, lock_args=None):
        if self.disable:
            return None
        now = self._time()
        if now - self._last_drawn < self.mininterval:
            return False
        self._last_drawn = now
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def __init__(self, *args, **kwargs):
        self._last_drawn = float("-inf")  # the first draw (by __init__) happens
        super().__init__(*args, **kwargs)


def progress_bar(*, disable: bool = False, **kwargs) -> std.tqdm:
    """``tqdm.auto.tqdm(**kwargs)``; disabled when ``disable`` or inside ``silenced()``;
    on a stream that is not a terminal, redrawn at most every ``LOG_INTERVAL_S`` s."""
    disable = disable or _silenced
    stream = kwargs.get("file") or sys.stderr
    if notebook_tqdm is not std.tqdm or _is_terminal(stream):
        return auto_tqdm(disable=disable, **kwargs)  # a terminal, or a notebook widget
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 10.0))
    return _LogBar(disable=disable, **kwargs)
