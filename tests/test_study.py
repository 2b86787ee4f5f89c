"""python -m gtl_jax.study end to end at smoke sizes: seeds, controls, baselines, CIs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gtl_jax.experiment import STUDY_METHODS
from gtl_jax.study import main
from gtl_jax.study_report import (
    seed_interval,
    selection_quantities,
    selection_rows,
    t95,
)


def test_seed_interval_is_students_t():
    mean, half = seed_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-3)
    assert np.isnan(seed_interval([0.5])[1]) and np.isnan(t95(1))


def _history(means_and_parents):
    """Generations whose fitness is [m - 0.1, m, m + 0.1] with the given parents."""
    return [
        {"fitness": [m - 0.1, m, m + 0.1], "parents": parents}
        for m, parents in means_and_parents
    ]


def test_realised_heritability_is_selections_response_over_its_differential():
    # Selection picks the best (+0.1 over the mean) in generations 1 and 2, and the mean
    # rises 0.5 -> 0.6 -> 0.7; the control's rises 0.5 -> 0.55 -> 0.6 (lifetimes alone).
    selected = _history([(0.5, [2, 2, 2]), (0.6, [2, 2, 2]), (0.7, [0, 1, 2])])
    control = _history([(0.5, [0, 1, 2]), (0.55, [0, 1, 2]), (0.6, [0, 1, 2])])
    q = selection_quantities(selected)
    assert q["differential"] == pytest.approx(0.2) and q["response"] == pytest.approx(
        0.2
    )
    assert selection_quantities(control)["differential"] == pytest.approx(0.0)
    rows = {
        r["arm"]: r
        for r in selection_rows(
            {"evolved": [selected, selected], "no_selection": [control, control]}
        )
    }
    assert rows["evolved"]["heritability"][0] == pytest.approx((0.2 - 0.1) / 0.2)
    assert "heritability" not in rows["no_selection"]


@pytest.mark.slow
def test_smoke_study_evaluates_every_method_over_seeds(tmp_path, capsys):
    workdir = tmp_path / "study"
    flags = ["--config=configs/omniglot.py:smoke", "--quiet", f"--workdir={workdir}"]
    flags += ["--config.suite.study_ways=5", "--config.evaluation.eval_shots=1"]
    flags += ["--config.suite.seeds=0,1"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "omniglot (test classes), 5-way 1-shot" in out
    assert "digits (all classes), 5-way 1-shot" in out
    for arm in ("evolved", "no_selection"):
        for seed in (0, 1):
            assert (
                workdir / arm / f"seed_{seed}" / "learngene" / "metadata.json"
            ).is_file()
    meta = json.loads(
        (
            workdir / "no_selection" / "seed_1" / "learngene" / "metadata.json"
        ).read_text()
    )
    config = meta["config"]
    assert config["evolution"]["selection"] == "none" and config["seed"] == 1
    assert meta["choice"]["rule"] == "random member"

    summary = json.loads((workdir / "results.json").read_text())
    rows = summary["rows"]
    # Selection's quantities per arm, over the seeds, in the table and the summary.
    assert "Selection (breeder's equation, over seeds)" in out
    arms = {r["arm"]: r for r in summary["selection"]}
    assert set(arms) == {"evolved", "no_selection", "score"}
    assert all(r["seeds"] == 2 for r in arms.values())
    assert (
        "heritability" in arms["evolved"] and "heritability" not in arms["no_selection"]
    )
    assert {r["method"] for r in rows} == set(STUDY_METHODS)
    jobs = [
        json.loads(line) for line in (workdir / "jobs.jsonl").read_text().splitlines()
    ]
    for row in rows:
        seeded = row["method"] not in ("scratch", "pretrain-full")
        assert row["seeds"] == (2 if seeded else 1)
        mine = [
            j
            for j in jobs
            if j["label"].split("/")[0] == row["method"]
            and (j["dataset"], j["way"], j["shot"]) == (row["dataset"], 5, 1)
        ]
        assert row["accuracy"][0] == pytest.approx(
            np.mean([np.mean(j["final"]) for j in mine])
        )
        if row["method"] == "scratch":
            assert row["gain"][0] == 0.0
    # Every method of a setting saw the same episodes.
    for setting in {(j["dataset"], j["way"], j["shot"]) for j in jobs}:
        prints = {
            j["fingerprint"]
            for j in jobs
            if (j["dataset"], j["way"], j["shot"]) == setting
        }
        assert len(prints) == 1
    # Equal compute: the pre-training control saw as many images as one evolution.
    images = {r["method"]: r["images"] for r in rows}
    assert 0 <= images["pretrain-circuit-eq"] - images["learngene"] < 64
    assert (workdir / "fitness.png").is_file()
    # A rerun finds every evolution, pre-trained network and job done: the same table.
    jobs_kept = sorted(p.name for p in (workdir / "jobs").iterdir())
    assert len(jobs_kept) == len(jobs)
    assert main(flags) == 0
    again = json.loads((workdir / "results.json").read_text())
    assert again["rows"] == rows
    assert sorted(p.name for p in (workdir / "jobs").iterdir()) == jobs_kept
