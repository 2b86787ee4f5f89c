"""gtl_jax.tensorboard (tensorboardX) writes event files that TensorBoard's own readers
read (without TensorFlow): tags, steps, values, the file version, a resumed run's second
file, the config (text and hparams) and an evolve run's final results table (text)."""

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
    acc = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return acc


def text_of(acc, tag: str) -> list[tuple[int, str]]:
    """``(step, text)`` of a text summary (tensorboardX names it ``<tag>/text_summary``)."""
    return [
        (e.step, e.tensor_proto.string_val[0].decode())
        for e in acc.Tensors(f"{tag}/text_summary")
    ]


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


def test_config_is_text_and_hparams_and_results_are_text(tmp_path):
    config = {
        "seed": 3,
        "evolution": {"generations": 2, "selection": "truncation", "ratio": 0.5},
        "data": {"dataset": "omniglot", "data_dir": None, "shots": [1, 5]},
    }
    table = "| accuracy | 5-way 1-shot |\n| --- | --- |\n| learngene | 41.2 ± 1.0 |"
    with tb.EventWriter(tmp_path) as events:
        events.config(config, metrics=["fitness_max"])
        events.scalars(1, {"fitness_max": 0.5})
        events.text("results", table, step=2)
    acc = load(tmp_path)
    ((step, text),) = text_of(acc, "config")
    assert step == 0 and '"selection": "truncation"' in text
    assert text_of(acc, "results") == [(2, table)]

    plugin = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    plugin.Reload()
    content = plugin.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: PLC0415

    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["seed"].number_value == 3
    assert start.hparams["evolution.selection"].string_value == "truncation"
    assert start.hparams["evolution.ratio"].number_value == 0.5
    assert start.hparams["data.shots"].string_value == "[1, 5]"
    assert start.hparams["data.data_dir"].string_value == "null"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["fitness_max"]


def test_an_evolve_run_writes_its_config_and_final_table(tmp_path, capsys):
    """The smoke run, one generation: TensorBoard's reader finds the scalars, the config
    and the final table, the same text as results.md."""
    from gtl_jax.evolve import main  # noqa: PLC0415

    workdir = tmp_path / "run"
    argv = [
        "--config=configs/omniglot.py:smoke",
        "--config.evolution.generations=1",
        f"--workdir={workdir}",
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    acc = load(workdir / "tensorboard")
    assert [p.step for p in acc.Scalars("fitness_max")] == [1]
    ((_, config),) = text_of(acc, "config")
    assert '"generations": 1' in config
    ((step, table),) = text_of(acc, "results")
    assert step == 1
    assert table + "\n" == (workdir / "results.md").read_text()
    assert "| learngene |" in table
