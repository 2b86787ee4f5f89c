"""A run's metrics, config and results as TensorBoard event files, through tensorboardX
(no TensorFlow). Usage::

    with EventWriter(workdir / "tensorboard") as events:
        events.config(config_dict)  # text (JSON) and hparams
        events.scalars(generation, {"fitness_max": 0.61, "fitness_mean": 0.55})
        events.text("results", results_markdown, step=generations)

and ``tensorboard --logdir workdir/tensorboard`` (TensorBoard itself runs without
TensorFlow).
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

from tensorboardX import SummaryWriter, summary
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

_FLOAT32_MAX = 3.4028234663852886e38


def scalar_value(value) -> float | None:
    """``value`` as a float if it is one real number (bool, int, float, a NumPy or JAX
    0-d array of them), else None (strings, lists, arrays, None, complex numbers)."""
    if isinstance(value, numbers.Real):
        x = value
    elif getattr(value, "shape", None) == ():
        kind = getattr(getattr(value, "dtype", None), "kind", "O")
        if kind in "cmMOSU":  # complex, times, objects, strings
            return None
        x = value
    else:
        return None
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return None


def flat_hparams(values: Mapping, prefix: str = "") -> dict[str, bool | float | str]:
    """A nested config as ``{"section.field": value}`` of the types the hparams plugin
    takes (bool, number, string); lists, None and the like become their JSON text."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | str):
            out[name] = value
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            out[name] = float(value) if isinstance(value, float) else int(value)
        else:
            out[name] = json.dumps(value, default=str)
    return out


_counter = itertools.count()


class EventWriter:
    """Writes to a new event file in ``logdir`` (created if missing).

    Each writer opens its own file (``events.out.tfevents.<time>.<host>.<pid>.<n>``,
    never an existing one), so a resumed run adds a file next to the earlier ones and
    TensorBoard reads them all in name (= time) order.

    Args:
      logdir: the folder of the run's event files.
      start_step: if given, a ``SessionLog`` START event at this step follows the file
        version. TensorBoard then drops the points that earlier files hold at steps
        ``>= start_step``: a run resumed from a checkpoint at generation ``g`` passes
        ``g + 1``, so points a killed run wrote beyond its checkpoint are not shown twice.

    Values that are not one real number (lists, strings, None) are skipped. NaN and
    +-inf (e.g. the fitness of a generation whose members all diverged), and values
    beyond float32's range (``simple_value``'s type), are skipped too: that tag has no
    point at that step, and the chart joins its neighbours. :meth:`scalars` returns the
    tags it wrote.
    """

    def __init__(self, logdir: str | os.PathLike, *, start_step: int | None = None):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.{next(_counter)}"
        self._writer = SummaryWriter(str(self.logdir), filename_suffix=suffix)
        self._events = self._writer._get_file_writer()
        (self.path,) = self.logdir.glob(f"events.out.tfevents.*{suffix}")
        if start_step is not None:
            start = SessionLog(status=SessionLog.START)
            self._events.add_event(
                Event(wall_time=time.time(), step=int(start_step), session_log=start)
            )
        self._closed = False
        self.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is closed")

    def scalars(
        self, step: int, values: Mapping[str, object], wall_time: float | None = None
    ) -> list[str]:
        """Writes the scalar ``values`` at ``step`` (one event) and flushes the file, so
        TensorBoard sees every step as soon as it is written.

        Returns the tags written; non-scalar and non-finite values are skipped (see the
        class docstring).
        """
        self._check_open()
        written = {}
        for tag, value in values.items():
            x = scalar_value(value)
            # Finite, and within float32 (simple_value's type).
            if x is not None and math.isfinite(x) and abs(x) <= _FLOAT32_MAX:
                written[str(tag)] = x
        if written:
            merged = Summary(
                value=[summary.scalar(t, x).value[0] for t, x in written.items()]
            )
            self._events.add_summary(merged, int(step), wall_time)
            self.flush()
        return list(written)

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Markdown text (TensorBoard's Text tab) at ``step``."""
        self._check_open()
        self._writer.add_text(tag, markdown, int(step))
        self.flush()

    def config(
        self, values: Mapping, *, metrics: Sequence[str] = (), step: int = 0
    ) -> None:
        """The run's config: its JSON as text (tag ``config``) and every field as an
        hparam (``section.field``) of this run, with ``metrics`` (scalar tags of the run)
        as the hparams dashboard's metrics."""
        self._check_open()
        text = json.dumps(values, indent=2, sort_keys=True, default=str)
        # Indented four spaces: a Markdown code block.
        self.text(
            "config", "".join(f"    {line}\n" for line in text.splitlines()), step
        )
        experiment, start, end = summary.hparams(
            flat_hparams(values), {m: 0.0 for m in metrics}
        )
        for s in (experiment, start, end):
            self._events.add_summary(s, int(step))
        self.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
