"""Runs that resume from their workdir: killed with SIGKILL at several moments, or moved
across device counts (8 -> 1 -> 4), they end like an uninterrupted run.

Every run is a subprocess of ``python -m gtl_jax.evolve`` on a tiny config whose population
(9) no tested device or process count divides: 8 and 4 devices hold it padded to 16 and 12,
2 processes to 10, and a checkpoint holds its 9 real members; the CPU device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Subprocesses inherit
``GTL_JAX_CACHE_DIR``, so restarts load their compilations from the persistent cache.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT

from gtl_jax.checkpoint import load_learngene

# The fast tier (-m 'not slow') leaves these out: each test runs python -m gtl_jax.evolve
# in subprocesses.
pytestmark = pytest.mark.slow

GENERATIONS = 3
TINY = [
    "--config=configs/omniglot.py:smoke",
    "--quiet",
    "--config.evolution.pop_size=9",
    "--config.evolution.tournament_size=3",
    "--config.evolution.life_steps=1",
    "--config.evolution.life_batch=8",
    "--config.evolution.critic_steps=1",
    "--config.evolution.critic_query=5",
    "--config.descendants.steps=1",
    "--config.evaluation.eval_shots=1",
    "--config.evaluation.eval_episodes=8",
    "--config.evaluation.eval_query=5",
]
TIMEOUT = 300  # seconds for one process


def evolve(workdir, generations: int = GENERATIONS) -> list[str]:
    return [sys.executable, "-m", "gtl_jax.evolve", *TINY] + [
        f"--workdir={workdir}",
        f"--config.evolution.generations={generations}",
    ]


def env(devices: int = 1) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def run_to_end(workdir, generations: int = GENERATIONS, devices: int = 1) -> None:
    done = subprocess.run(
        evolve(workdir, generations),
        env=env(devices),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def metrics(workdir) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def assert_close_to_reference(workdir, reference) -> None:
    """Same lineage, fitness within one near-tied query (1/25 of a 5-way x 5-query critic),
    learngene to float tolerance: what a run on other devices or processes must give."""
    for m, n in zip(metrics(workdir), metrics(reference), strict=True):
        np.testing.assert_allclose(m["fitness"], n["fitness"], atol=1.5 / 25)
        assert m["parents"] == n["parents"]
    gene, meta = load_learngene(workdir / "learngene")
    expected, _ = load_learngene(reference / "learngene")
    assert meta["generation"] == GENERATIONS
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        gene,
        expected,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run on one device."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    run_to_end(workdir)
    return workdir


# --------------------------------------------------------------------------- kills


# Runs the CLI with Orbax's CheckpointManager.save patched to SIGKILL the process as soon as
# save() returns, while Orbax may still be writing and renaming in its background thread: a
# kill during a checkpoint save at a deterministic moment (polling for the temporary directory
# from outside missed it when saves were fast, and the test failed in CI).
KILL_MID_SAVE = """
import os, runpy, signal, sys
import orbax.checkpoint as ocp
save = ocp.CheckpointManager.save
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
ocp.CheckpointManager.save = save_then_die
sys.argv = ["gtl_jax.evolve", *sys.argv[1:]]
runpy.run_module("gtl_jax.evolve", run_name="__main__")
"""


def run_and_kill(workdir, when, *, mid_save: bool = False) -> bool:
    """Starts a run and SIGKILLs it once ``when()`` is true (or, with ``mid_save``, lets it
    kill itself during its first checkpoint save); False if it finished unkilled."""
    command = evolve(workdir)
    if mid_save:
        command = [sys.executable, "-c", KILL_MID_SAVE, *command[3:]]
    proc = subprocess.Popen(
        command,
        env=env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if when():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    if mid_save and proc.returncode == -signal.SIGKILL:
        return True
    assert proc.returncode == 0, err[-3000:]
    return False


def test_killed_runs_resume_to_the_same_learngene(reference, tmp_path):
    """Three kills, seeded: during the first checkpoint save (right after save() returns),
    at a random moment of the evolution, and the instant the learngene
    file's temporary directory appears (mid-write). Before the last resume a metrics line cut
    short (as a kill mid-write leaves it) is appended, and a large partial checkpoint left."""
    workdir = tmp_path / "w"
    rng = random.Random(6)
    started = {}

    def at_a_random_moment():
        # A random moment once the evolution is under way (its first metrics line is out).
        path = workdir / "metrics.jsonl"
        if not path.exists() or not path.read_text().strip():
            return False
        started.setdefault("t", time.monotonic() + rng.uniform(0.0, 2.0))
        return time.monotonic() >= started["t"]

    # The mid-save kill comes first: a later run may have no generation left to save.
    kills = {
        "checkpoint save": (lambda: False, True),
        "random moment": (at_a_random_moment, False),
        "learngene write": (lambda: (workdir / "learngene.tmp").exists(), False),
    }
    killed = [
        name
        for name, (when, mid_save) in kills.items()
        if run_and_kill(workdir, when, mid_save=mid_save)
    ]
    assert killed == list(kills), f"killed only at {killed}"
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"generation": 2, "fitness_m')
    # And a large temporary save, as a kill early in a big checkpoint's save leaves it:
    # removing it takes long enough that two managers opened on the workdir race to delete
    # the same files (the resume crashed in Orbax's background cleanup in CI).
    partial = workdir / "checkpoints" / f"{GENERATIONS}.orbax-checkpoint-tmp"
    for i in range(40):
        (partial / f"d{i}").mkdir(parents=True)
        for j in range(100):
            (partial / f"d{i}" / f"f{j}").write_bytes(b"0")
    run_to_end(workdir)

    resumed, meta = load_learngene(workdir / "learngene")
    expected, _ = load_learngene(reference / "learngene")
    assert meta["generation"] == GENERATIONS
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)
    assert metrics(workdir) == [
        {**m, "seconds": n["seconds"]}
        for m, n in zip(metrics(reference), metrics(workdir))
    ]
    leftovers = [p.name for p in workdir.iterdir() if p.name.endswith((".tmp", ".old"))]
    leftovers += [
        p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name
    ]
    assert not leftovers


# --------------------------------------------------------------------------- devices


def test_checkpoint_restores_across_8_1_4_devices(reference, tmp_path):
    workdir = tmp_path / "w"
    # Generation 1 on 8 devices, 2 on 1 device, 3 on 4 devices: each resumes the last.
    for devices, generations in ((8, 1), (1, 2), (4, 3)):
        run_to_end(workdir, generations, devices)
        summary = json.loads((workdir / "results.json").read_text())
        assert summary["devices"] == devices
        assert [m["generation"] for m in metrics(workdir)] == list(
            range(1, generations + 1)
        )
    # Sharded runs equal one device's to float tolerance (tests/test_sharding.py).
    assert_close_to_reference(workdir, reference)


# --------------------------------------------------------------------------- processes


def test_joined_processes_resume_across_process_counts(reference, tmp_path):
    # Generation 1 as 2 joined processes (--config.execution.processes=2: jax.distributed over Gloo, one CPU
    # device each), 2 in one process, 3 as 2 processes again, each resuming the last.
    workdir = tmp_path / "w"
    for processes, generations in ((2, 1), (1, 2), (2, 3)):
        done = subprocess.run(
            evolve(workdir, generations)
            + [f"--config.execution.processes={processes}"],
            env=env(1),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((workdir / "results.json").read_text())
        assert (summary["processes"], summary["devices"]) == (processes, processes)
        assert done.stdout.count("| learngene |") == 1  # only process 0 prints
    assert_close_to_reference(workdir, reference)
    # The final evaluation splits its descendants between the processes: same table.
    ours = json.loads((workdir / "results.json").read_text())["results"]
    theirs = json.loads((reference / "results.json").read_text())["results"]
    for name in theirs:
        np.testing.assert_allclose(
            ours[name]["per_episode"], theirs[name]["per_episode"], atol=1.5 / 25
        )
