"""The population sharded over 8 CPU devices gives one device's results (to float tolerance).

The device count is fixed when JAX starts, so each run is a subprocess of
tests/scripts/sharded_evolution.py with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``;
it inherits ``GTL_JAX_CACHE_DIR``, so its compilations are cached like the tests'. Checkpoints
restored across device counts: tests/test_resume.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

# The fast tier (-m 'not slow') leaves these out: each test runs evolutions in
# subprocesses on 8 CPU devices.
pytestmark = pytest.mark.slow

SCRIPT = ROOT / "tests" / "scripts" / "sharded_evolution.py"


def run_on(devices: int, args: list[str]) -> None:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(
    "strategy,pop_size,tournament_size,life_genes",
    [
        ("loop", 8, 4, ""),
        ("loop", 9, 3, ""),
        ("vmap", 9, 3, ""),
        ("vmap", 12, 3, "lr,weight_decay"),
    ],
)
def test_sharded_evolution_over_8_devices_matches_one_device(
    strategy, pop_size, tournament_size, life_genes, tmp_path
):
    # Two generations, by the host loop (the CPU default) or by the pure jitted generation
    # (vmap). The script asserts the layout of the state: 8 members split over the 8
    # devices, 1 each; 9 (the default config's population) and 12 padded to 16, 2 each.
    flags = ["--strategy", strategy, "--pop_size", str(pop_size)]
    flags += ["--tournament_size", str(tournament_size), "--life_genes", life_genes]
    results = {}
    for devices in (1, 8):
        out = tmp_path / f"{devices}.npz"
        run_on(devices, [*flags, "--out", str(out)])
        results[devices] = dict(np.load(out))
    one, sharded = results[1], results[8]
    assert int(one["devices"]) == 1 and int(sharded["devices"]) == 8
    assert one.keys() == sharded.keys()
    genes = [k for k in one if k.startswith("learngenes/")]
    assert len(genes) == 2 * 8 * 5  # generations x layers x tensors
    assert one[genes[0]].shape[0] == pop_size
    tolerance = 1.5 / 75
    for g in range(2):
        # Fitness is a query accuracy: a float-level difference can flip a near-tied query,
        # 1/75 of one critic's accuracy (5 ways x 15 queries), no more.
        for k in one:  # the genes each member lived with: sampled, not computed
            if k.startswith(f"life_genes/{g}/"):
                np.testing.assert_allclose(sharded[k], one[k], rtol=1e-6, err_msg=k)
        fitness = one[f"fitness/{g}"]
        np.testing.assert_allclose(sharded[f"fitness/{g}"], fitness, atol=tolerance)
        parents, expected = sharded[f"parents/{g}"], one[f"parents/{g}"]
        if not np.array_equal(parents, expected):
            # A flipped query may make a tournament pick another winner, but only one as
            # fit, to that query, as one device's winner; from there the lineages differ, so
            # nothing later is compared (the weights of sharded training without selection
            # are compared below). Seen in CI once the CPU forms became the default.
            np.testing.assert_allclose(  # each of the two may have flipped a query
                fitness[parents], fitness[expected], atol=2 * tolerance
            )
            break
        for k in genes:
            if k.startswith(f"learngenes/{g}/"):
                np.testing.assert_allclose(
                    sharded[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k
                )


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("members", [8, 9])
def test_sharded_training_over_8_devices_matches_one_device(
    strategy, members, tmp_path
):
    # Eight networks trained by the strategy, sharded over 8 devices and on one; no
    # selection, so nothing discrete can amplify a float-level difference.
    out = tmp_path / "result.npz"
    flags = ["--strategy", strategy, "--pop_size", str(members), "--lifetime_only"]
    run_on(8, [*flags, "--out", str(out)])
    result = dict(np.load(out))
    single = [k[len("single/") :] for k in result if k.startswith("single/")]
    assert "losses" in single and len(single) > 10
    for k in single:
        np.testing.assert_allclose(
            result[f"sharded/{k}"], result[f"single/{k}"], rtol=1e-4, atol=1e-5
        )


def test_the_smoke_config_runs_on_8_devices(tmp_path):
    # Its population of 3 does not divide 8 devices: padded, as any population is.
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    command = ["-m", "gtl_jax.evolve", "--config=omniglot:smoke", "--quiet"]
    done = subprocess.run(
        [sys.executable, *command, f"--workdir={tmp_path}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["devices"] == 8 and "| learngene |" in done.stdout
