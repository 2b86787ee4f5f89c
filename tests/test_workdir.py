"""A workdir's files, quickly: atomic writes, metrics read back after a kill, curves."""

from __future__ import annotations

import json
import math

from gtl_jax.workdir import add_curve, read_metrics, write_atomic


def test_metrics_written_atomically_read_back_skipping_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []  # no run yet
    lines = [json.dumps({"generation": g, "fitness_max": 0.5 + g / 10}) for g in (1, 2)]
    write_atomic(path, "\n".join(lines) + '\n{"generation": 3, "fitn')  # cut short
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    assert [m["generation"] for m in read_metrics(path)] == [1, 2]
    write_atomic(path, "[1, 2]\n" + lines[0] + "\n")  # a line that is not a dict
    assert read_metrics(path) == [{"generation": 1, "fitness_max": 0.6}]


def test_a_rows_curve_is_added_with_its_instinct_and_final_half_width():
    curves = {}
    row = {
        "method": "learngene",
        "curve_steps": [0, 10, 20],
        "curve": [0.5, 0.7, 0.8],
        "instinct": [0.6, 0.01],
        "accuracy": [0.8, 0.02],
    }
    add_curve(curves, "5-way 1-shot", row)
    add_curve(curves, "5-way 1-shot", {**row, "method": "scratch"})
    entry = curves["5-way 1-shot"]
    assert entry["steps"] == [0, 10, 20]
    assert entry["learngene"] == [0.5, 0.7, 0.8]
    assert entry["learngene_instinct"] == (0.6, 0.01)
    ci = entry["scratch_ci"]
    assert all(math.isnan(x) for x in ci[:-1]) and ci[-1] == 0.02
