"""Scalar metrics as TensorBoard event files, without TensorFlow or any other dependency.

An event file is a sequence of TFRecords (little-endian ``uint64`` length, masked CRC32C of
the length, the bytes, masked CRC32C of the bytes), each holding one serialized ``Event``
protocol buffer. The few fields written here are encoded by hand:

- ``Event``: ``wall_time`` (1, double), ``step`` (2, int64), ``file_version`` (3, string),
  ``summary`` (5, ``Summary``), ``session_log`` (7, ``SessionLog``);
- ``Summary``: ``value`` (1, repeated ``Value``); ``Value``: ``tag`` (1, string),
  ``simple_value`` (2, float);
- ``SessionLog``: ``status`` (1, enum; ``START`` = 1).

The first event of a file is ``file_version: "brain.Event:2"``. Usage::

    with EventWriter(workdir / "tensorboard") as events:
        events.scalars(generation, {"fitness_max": 0.61, "fitness_mean": 0.55})

and ``tensorboard --logdir workdir/tensorboard`` (TensorBoard itself runs without
TensorFlow).
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import pathlib
import socket
import struct
import time
from collections.abc import Mapping

FILE_VERSION = "brain.Event:2"
_SESSION_START = 1  # SessionLog.SessionStatus.START
_FLOAT32_MAX = 3.4028234663852886e38

# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord framing uses it.
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)
del _n, _c


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# ------------------------------------------------------------------ protobuf encoding


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(
    wall_time: float,
    step: int,
    *,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
    session_start: bool = False,
) -> bytes:
    """A serialized ``Event`` with one of: a file version, scalar values, a session start."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars is not None:
        summary = b"".join(
            _bytes_field(
                1,
                _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value),
            )
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, summary)
    if session_start:
        out += _bytes_field(7, _key(1, 0) + _varint(_SESSION_START))
    return out


# ------------------------------------------------------------------ the writer


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


_counter = itertools.count()


class EventWriter:
    """Writes scalars to a new event file in ``logdir`` (created if missing).

    Each writer opens its own file, ``events.out.tfevents.<10-digit time>.<host>.<pid>.<n>``
    (never an existing one), so a resumed run adds a file next to the earlier ones and
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
        host = socket.gethostname().replace("/", "_") or "localhost"
        while True:
            name = (
                f"events.out.tfevents.{int(time.time()):010d}.{host}"
                f".{os.getpid()}.{next(_counter)}"
            )
            try:
                self._file = open(self.logdir / name, "xb")
                break
            except FileExistsError:
                continue
        self.path = self.logdir / name
        self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))
        if start_step is not None:
            self._write(encode_event(time.time(), int(start_step), session_start=True))
        self.flush()

    def _write(self, event: bytes) -> None:
        if self._file.closed:
            raise ValueError(f"{self.path} is closed")
        self._file.write(tfrecord(event))

    def scalars(
        self, step: int, values: Mapping[str, object], wall_time: float | None = None
    ) -> list[str]:
        """Writes the scalar ``values`` at ``step`` (one event) and flushes the file, so
        TensorBoard sees every step as soon as it is written.

        Returns the tags written; non-scalar and non-finite values are skipped (see the
        class docstring).
        """
        written = {}
        for tag, value in values.items():
            x = scalar_value(value)
            # Finite, and within float32 (simple_value's type).
            if x is not None and math.isfinite(x) and abs(x) <= _FLOAT32_MAX:
                written[str(tag)] = x
        if written:
            now = time.time() if wall_time is None else float(wall_time)
            self._write(encode_event(now, int(step), scalars=written))
            self.flush()
        return list(written)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
