"""Stopping a command the way users expect: Ctrl-C (SIGINT) or SIGTERM at any moment.

The shell around the commands (``python -m gtl_jax.evolve``, ``.inherit``, ``.study``):

- ``command``: a decorator for a command's ``main``. While it runs, SIGINT and SIGTERM raise
  ``Stopped`` (a ``KeyboardInterrupt``) in the main thread; ``main`` then unwinds (closing its
  checkpoint manager, shutting its worker processes down) and the command prints one line,
  ``interrupted: <what is saved and how to go on>`` (``describe`` registers that text), and
  exits with 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM. A second signal while
  it stops is ignored, so a double Ctrl-C cannot cut the clean-up short.
- ``deferred``: a block no signal may cut (an Orbax save or restore: a ``KeyboardInterrupt``
  raised inside Orbax's event loop would close it under its background work). A signal that
  arrives inside is delivered when the block ends.
- ``agreed``: joined processes (``jax.distributed``) act on a signal only where all of them
  check together (after each generation's checkpoint), so they stop at the same point.
- Before ``main`` (``python -m gtl_jax.<command>`` importing its modules, a few seconds): the
  package imports this module first, which then installs handlers that print
  ``interrupted: while starting, ...`` and exit at once (nothing is written yet).
- Worker processes (``gtl_jax.distributed.worker_pool``) start with SIGINT ignored
  (``sigint_ignored`` around their start: the disposition is inherited, so they ignore it from
  their first instruction, before any import). A Ctrl-C at a terminal, which signals the whole
  process group, reaches only the main process, which shuts the workers down.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# Set in the processes gtl_jax.distributed.launch_local starts (defined here: this module
# imports nothing of the package).
CHILD_ENV = "GTL_JAX_LOCAL_PROCESS"


class Stopped(KeyboardInterrupt):
    """The process received SIGINT or SIGTERM (``signum``); exit with ``exit_code``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(stop: BaseException) -> int:
    """128 + the signal: 130 for SIGINT (also a plain ``KeyboardInterrupt``), 143 for SIGTERM."""
    return stop.exit_code if isinstance(stop, Stopped) else 128 + signal.SIGINT


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- commands

_describe: Callable[[], str] | None = None


def describe(what: Callable[[], str]) -> None:
    """Registers what an interrupted command says after ``interrupted: ``: called when it stops
    (so it can look at what is on disk), e.g. ``generation 3 of 8 is checkpointed in runs/x;
    run the same command again to resume``."""
    global _describe
    _describe = what


def _message() -> str:
    if _describe is not None:
        try:
            return _describe()
        except Exception as e:  # the line must come out whatever the disk holds
            return f"(what was saved is unknown: {type(e).__name__}: {e})"
    return "nothing was written; run the same command again to start"


def _reports() -> bool:
    """Whether this process prints the line: of joined local processes only process 0."""
    return not os.environ.get(CHILD_ENV) or os.environ.get("JAX_PROCESS_ID") in (
        None,
        "0",
    )


class _StopHandlers:
    """SIGINT and SIGTERM raise ``Stopped`` once; later ones are ignored (clean-up runs).

    Python runs a signal handler between any two bytecodes of the main thread, also inside a
    garbage-collector callback or a ``__del__`` (JAX registers a gc callback), where an
    exception cannot propagate: Python prints it as "Exception ignored in ..." and goes on,
    and the stop would be lost. ``sys.unraisablehook`` catches such a ``Stopped`` and delivers
    the signal again from another thread, so it is handled in ordinary code a moment later.
    """

    def __init__(self):
        self.stopping = False
        self.in_hook = False
        self.previous = {}
        self.previous_hook = None

    def handle(self, signum, frame):
        if self.stopping or self.in_hook:  # in_hook: it is being delivered again
            return
        self.stopping = True
        raise Stopped(signum)

    def unraisable(self, info) -> None:
        stop = info.exc_value
        if not (isinstance(stop, Stopped) and self.previous):
            self.previous_hook(info)
            return
        self.in_hook, self.stopping = True, False
        try:
            threading.Thread(target=self._deliver, args=(stop.signum,)).start()
        finally:
            self.in_hook = False

    def _deliver(self, signum: int) -> None:
        """The signal again, once the hook has returned (raised in the hook, it would be
        unraisable again)."""
        while self.in_hook:
            time.sleep(0.001)
        _thread.interrupt_main(signum)

    def __enter__(self) -> _StopHandlers:
        if _main_thread():
            for s in STOP_SIGNALS:
                self.previous[s] = signal.signal(s, self.handle)
            self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            # After main, Python's own handling again (not "while starting").
            signal.signal(s, _DEFAULTS[s] if handler is _starting else handler)
        if self.previous_hook is not None:
            sys.unraisablehook = self.previous_hook
        self.previous = {}


def command(main: Callable[..., int]) -> Callable[..., int]:
    """Decorates a command's ``main``: a stop by SIGINT or SIGTERM (or a ``KeyboardInterrupt``)
    returns 130 or 143 after one line on stderr, ``interrupted: <describe()'s text>``."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        global _describe
        _describe = None
        with _StopHandlers() as handlers:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as stop:
                handlers.stopping = True
                if _reports():
                    print(f"interrupted: {_message()}", file=sys.stderr, flush=True)
                return exit_code(stop)
            finally:
                _describe = None

    return wrapper


# --------------------------------------------------------------------------- starting

_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def _run_as_command() -> bool:
    """Whether this process is ``python -m gtl_jax.<command>`` (not a program importing
    the library, nor a worker process: those are started with ``-c``)."""
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b.startswith("gtl_jax.") for a, b in zip(argv, argv[1:]))


def _starting(signum, frame):
    print(
        "interrupted: while starting, before anything was written; run the same command "
        "again to start",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)  # only modules were being imported: nothing to clean up


def handle_starting() -> None:
    """For ``python -m gtl_jax.<command>`` only: SIGINT and SIGTERM before the command's
    ``main`` runs (its modules are importing) print one line and exit 130/143."""
    if not (_main_thread() and _run_as_command()):
        return
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is _DEFAULTS[s]:  # not where they are ignored
            signal.signal(s, _starting)


# --------------------------------------------------------------------------- blocks


@contextlib.contextmanager
def _holding() -> Iterator[list[int]]:
    """SIGINT and SIGTERM appended to the yielded list instead of handled (main thread, and
    signals not ignored); when the block ends the handlers come back and the signals still
    in the list are delivered, once each, in order of arrival."""
    held: list[int] = []
    if not _main_thread():
        yield held
        return
    previous = {}
    for s in STOP_SIGNALS:
        if signal.getsignal(s) not in (signal.SIG_IGN, None):
            previous[s] = signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM until the block ends, then delivers them to this process (to
    whatever handled them before: ``Stopped``, ``KeyboardInterrupt``, the default action).

    Outside the main thread, or for a signal whose handler is ``SIG_IGN``, it does nothing.
    """
    with _holding():
        yield


@contextlib.contextmanager
def agreed(agree: Callable[[int], int] | None) -> Iterator[Callable[[], None]]:
    """Joined processes stop together: SIGINT and SIGTERM are held for the block and acted on
    only at the points where every process calls the ``check`` it yields.

    A process that stops on its own while the others wait in a collective would hang them
    all (measured: SIGTERM to two joined processes left one in an XLA collective after the
    other had unwound). ``check()`` calls ``agree(signum)`` with the first signal this
    process holds (0: none), a collective returning the largest of all processes', and
    raises ``Stopped`` with it in every process if any holds one. With ``agree=None`` (one
    process) it does nothing: signals act at once, as everywhere else. Signals still held
    when the block ends are delivered then.
    """
    if agree is None or not _main_thread():
        yield lambda: None
        return
    with _holding() as held:

        def check() -> None:
            signum = agree(held[0] if held else 0)
            if signum:
                held.clear()  # acted on here, not again when the block ends
                raise Stopped(signum)

        yield check


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored during the block (main thread only): processes started inside it inherit
    the ignored disposition, and Python keeps it (it installs its ``KeyboardInterrupt`` handler
    only over the default one). A SIGINT to this process inside the block is lost: keep the
    block to starting processes (milliseconds)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


handle_starting()  # imported first by the package (gtl_jax/__init__.py)
