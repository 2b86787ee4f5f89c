"""gtl_jax.tensorboard writes event files that TensorBoard's own readers read (without
TensorFlow): tags, steps, values, the file version, a resumed run's second file."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from tensorboard.backend.event_processing import (
    event_accumulator,
    event_file_loader,
    plugin_event_accumulator,
)
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from gtl_jax import tensorboard as tb


def metrics_line(g: int) -> dict:
    """A metrics.jsonl line as gtl_jax.evolve writes it (scalars and lists)."""
    return {
        "generation": g,
        "fitness_max": 0.5 + 0.05 * g,
        "fitness_mean": 0.4 + 0.05 * g,
        "fitness_min": 0.3 + 0.05 * g,
        "fitness_ci": 0.02,
        "fitness": [0.3, 0.4, 0.5],
        "scores": [0.3, 0.4, 0.5],
        "diverged": g % 2,
        "life_loss_first": 1.6,
        "life_loss_last": 0.1 / g,
        "critic_instinct_mean": np.float32(0.35),
        "parents": [0, 0, 2],
        "best_index": 2,
        "diversity": 0.7,
        "seconds": 12.5,
    }


def load(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_crc32c_matches_tensorboard():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 8, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb.masked_crc32c(data) == masked_crc32c(data)


def test_events_parse_as_tensorboard_protos():
    event = event_pb2.Event.FromString(
        tb.encode_event(1.5, 7, scalars={"a": 0.25, "b/c": -3.0})
    )
    assert event.wall_time == 1.5 and event.step == 7
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [
        ("a", 0.25),
        ("b/c", -3.0),
    ]
    event = event_pb2.Event.FromString(tb.encode_event(2.0, -5, session_start=True))
    assert event.step == -5
    assert event.session_log.status == event_pb2.SessionLog.START


def test_metrics_read_back_by_event_accumulator(tmp_path):
    logdir = tmp_path / "tensorboard"
    with tb.EventWriter(logdir) as events:
        for g in range(1, 4):
            written = events.scalars(g, metrics_line(g))
    # Lists are skipped; ints, floats and NumPy scalars are written.
    assert "fitness" not in written and "parents" not in written
    assert {"diverged", "critic_instinct_mean", "generation"} <= set(written)

    files = list(logdir.iterdir())
    assert len(files) == 1 and files[0] == events.path
    assert files[0].name.startswith("events.out.tfevents.")
    first = next(iter(event_file_loader.EventFileLoader(str(files[0])).Load()))
    assert first.file_version == "brain.Event:2"

    acc = load(logdir)
    assert set(acc.Tags()["scalars"]) == set(written)
    for tag in ("fitness_max", "fitness_mean", "life_loss_last", "diverged"):
        points = acc.Scalars(tag)
        assert [p.step for p in points] == [1, 2, 3]
        expected = [float(metrics_line(g)[tag]) for g in (1, 2, 3)]
        assert [p.value for p in points] == pytest.approx(expected, rel=1e-6)
        assert all(abs(p.wall_time - points[0].wall_time) < 60 for p in points)
    assert acc.Scalars("critic_instinct_mean")[0].value == pytest.approx(0.35)


def test_the_tensorboard_server_reader_sees_the_scalars(tmp_path):
    """The accumulator ``tensorboard --logdir`` uses (simple values become tensors)."""
    with tb.EventWriter(tmp_path) as events:
        events.scalars(4, {"fitness_max": 0.75})
    acc = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "fitness_max" in acc.Tags()["tensors"]
    (point,) = acc.Tensors("fitness_max")
    assert point.step == 4
    assert float(point.tensor_proto.float_val[0]) == pytest.approx(0.75)


def test_non_finite_and_non_scalar_values_are_skipped(tmp_path):
    with tb.EventWriter(tmp_path) as events:
        written = events.scalars(
            1,
            {
                "nan": float("nan"),
                "inf": -math.inf,
                "too_big": 1e300,
                "text": "x",
                "none": None,
                "array": np.zeros(3),
                "complex": 1j,
                "zero_d": np.array(2.5),
                "jax": jnp.asarray(0.25),
                "flag": True,
                "ok": 1.0,
            },
        )
        assert events.scalars(2, {"nan": float("nan")}) == []  # no event at all
    assert written == ["zero_d", "jax", "flag", "ok"]
    acc = load(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["flag", "jax", "ok", "zero_d"]
    assert [p.value for p in acc.Scalars("flag")] == [1.0]
    with pytest.raises(ValueError, match="closed"):
        events.scalars(3, {"ok": 1.0})


def test_resumed_run_adds_a_second_file_and_replaces_orphaned_steps(tmp_path):
    """The first run wrote generations 1-3 but its checkpoint holds generation 2 (killed
    before saving 3): the resumed run starts at step 3 and writes 3-5 into a new file."""
    logdir = tmp_path / "tensorboard"
    with tb.EventWriter(logdir, start_step=1) as first:
        for g in (1, 2, 3):
            first.scalars(g, {"fitness_max": g / 10, "seconds": 1.0})
    with tb.EventWriter(logdir, start_step=3) as second:
        for g in (3, 4, 5):
            second.scalars(g, {"fitness_max": g / 10 + 0.01, "seconds": 2.0})

    files = sorted(logdir.iterdir())
    assert len(files) == 2 and first.path != second.path
    assert [f.name for f in files] == sorted([first.path.name, second.path.name])
    for f in files:  # each file is complete on its own
        events = list(event_file_loader.EventFileLoader(str(f)).Load())
        assert events[0].file_version == "brain.Event:2"
        assert [e.step for e in events if e.summary.value] == (
            [1, 2, 3] if f == first.path else [3, 4, 5]
        )

    acc = load(logdir)
    points = acc.Scalars("fitness_max")
    assert [p.step for p in points] == [1, 2, 3, 4, 5]  # step 3 once, from the resume
    assert [p.value for p in points] == pytest.approx([0.1, 0.2, 0.31, 0.41, 0.51])
    assert [p.value for p in acc.Scalars("seconds")] == [1, 1, 2, 2, 2]


def test_writers_in_the_same_second_never_share_a_file(tmp_path):
    paths = []
    for _ in range(3):
        with tb.EventWriter(tmp_path) as events:
            events.scalars(0, {"x": 1.0})
        paths.append(events.path)
    assert len(set(paths)) == 3 and len(list(tmp_path.iterdir())) == 3


def test_tensorboard_reads_without_tensorflow(tmp_path):
    with tb.EventWriter(tmp_path) as events:
        events.scalars(1, {"x": 0.5})
    code = (
        "import sys\n"
        "from tensorboard.backend.event_processing import event_accumulator as ea\n"
        f"acc = ea.EventAccumulator({str(tmp_path)!r}); acc.Reload()\n"
        "print(acc.Scalars('x')[0].value, 'tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    ).stdout.split()
    assert out == ["0.5", "False"]
