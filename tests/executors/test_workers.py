"""LifeWorkers: the members' lives computed by worker processes pinned one per core."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gtl_jax.experiment import load_config, make_executor, start_life_workers


@pytest.mark.slow
def test_worker_processes_compute_the_lives_of_the_population(omniglot):
    c = load_config("omniglot:smoke")  # pop 3: blocks of 2 and 1 members
    evo = make_executor(c, omniglot)
    key = jax.random.key(1)
    genes = evo.evo.init(jax.random.key(0)).learngenes
    here_steps, there_steps = [], []
    here = jax.device_get(evo.evaluate(key, 0, genes, on_step=here_steps.append))
    with start_life_workers(c, 2) as workers:
        there = workers(key, 0, genes, there_steps.append)
    # A pinned worker computes on one core, this process on two: XLA may sum in another
    # order, so equal up to float rounding; a flipped query moves accuracy by 1/75.
    query = 1 / (c.evolution.critic_way * c.evolution.critic_query)
    np.testing.assert_allclose(there.fitness, here.fitness, atol=query + 1e-6)
    np.testing.assert_allclose(there.instinct, here.instinct, atol=query + 1e-6)
    np.testing.assert_array_equal(there.diverged, here.diverged)
    np.testing.assert_allclose(
        there.life_losses, here.life_losses, rtol=1e-4, atol=1e-5
    )
    for a, b in zip(jax.tree.leaves(there.trained), jax.tree.leaves(here.trained)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The progress the workers report adds up to the steps of the whole population.
    assert sum(there_steps) == pytest.approx(sum(here_steps))
    assert sum(here_steps) == pytest.approx(
        c.evolution.life_steps + c.evolution.critic_steps
    )
    # Pinned workers compute on one core each: the numbers do not depend on how many there
    # are (one worker runs all 3 members; two run 2 and 1).
    with start_life_workers(c, 1) as worker:
        alone = worker(key, 0, genes)
    for a, b in zip(jax.tree.leaves(there), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(a, b)
