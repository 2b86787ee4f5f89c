"""Property tests of the evolution operators."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.evolution import EvolutionConfig
from gtl_jax.operators import (
    mutate,
    reproduce,
    sanitize_fitness,
    selection_statistics,
    tournament_select,
)


def _learngene(key, pop=None):
    shape = () if pop is None else (pop,)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "stage1/conv1": {
            "kernel": jax.random.normal(k1, shape + (3, 3, 1, 4)),
            "scale": 1.0 + 0.1 * jax.random.normal(k2, shape + (4,)),
            "bias": 0.1 * jax.random.normal(k3, shape + (4,)),
            "mean": jnp.full(shape + (4,), 0.5),
            "var": jnp.full(shape + (4,), 2.0),
        },
        "stage2/conv1": {
            "kernel": jax.random.normal(k2, shape + (3, 3, 4, 6)),
            "scale": jnp.ones(shape + (6,)),
            "bias": jnp.zeros(shape + (6,)),
            "mean": jnp.zeros(shape + (6,)),
            "var": jnp.ones(shape + (6,)),
        },
    }


@pytest.mark.parametrize("seed", range(20))
def test_tournament_winner_is_the_fittest_of_its_group(seed):
    key = jax.random.key(seed)
    fitness = jax.random.uniform(jax.random.fold_in(key, 1), (12,))
    fitness = fitness.at[seed % 12].set(jnp.nan).at[(seed + 5) % 12].set(jnp.inf)
    winners = tournament_select(key, fitness, tournament_size=3)
    assert winners.shape == (4,)
    groups = np.asarray(jax.random.permutation(key, 12)).reshape(4, 3)
    safe = np.asarray(sanitize_fitness(fitness))
    for group, winner in zip(groups, np.asarray(winners)):
        if np.isfinite(safe[group]).any():
            assert winner in group
            assert safe[winner] == safe[group].max()
        else:
            assert safe[winner] == safe.max()
        assert np.isfinite(fitness[winner])  # NaN or inf never wins


def test_nan_never_selected_even_by_elitism():
    fitness = jnp.array([jnp.nan, 0.1, jnp.nan, 0.3, -jnp.inf, 0.2])
    genes = _learngene(jax.random.key(0), pop=6)
    for seed in range(20):
        _, parents = reproduce(
            jax.random.key(seed), genes, fitness, tournament_size=2, sigma=0.1, rate=0.5
        )
        assert int(parents[0]) == 3  # the elite
        assert not set(np.asarray(parents).tolist()) & {0, 2}


def test_tournament_same_key_same_result_and_divisibility():
    fitness = jnp.arange(9.0)
    a = tournament_select(jax.random.key(3), fitness, tournament_size=3)
    b = tournament_select(jax.random.key(3), fitness, tournament_size=3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="divisible"):
        tournament_select(jax.random.key(3), fitness, tournament_size=2)


def test_lifetime_optimizer_is_checked_and_adam_keeps_the_sgd_default():
    assert EvolutionConfig().life_optimizer == "sgd"  # the CNNs' published numbers
    assert EvolutionConfig(life_optimizer="adam").life_optimizer == "adam"
    with pytest.raises(ValueError, match="^life_optimizer='rmsprop': must be one of"):
        EvolutionConfig(life_optimizer="rmsprop")


def test_mutate_sigma_zero_or_rate_zero_is_identity():
    gene = _learngene(jax.random.key(0))
    for kwargs in ({"sigma": 0.0, "rate": 1.0}, {"sigma": 0.5, "rate": 0.0}):
        out = mutate(jax.random.key(1), gene, **kwargs)
        chex.assert_trees_all_equal(out, gene)


def test_mutate_noise_scale_statistics_untouched_and_deterministic():
    gene = _learngene(jax.random.key(0))
    out = mutate(jax.random.key(1), gene, sigma=0.1, rate=1.0)
    again = mutate(jax.random.key(1), gene, sigma=0.1, rate=1.0)
    chex.assert_trees_all_equal(out, again)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, gene)
    for name in gene:
        for k in ("mean", "var"):
            np.testing.assert_array_equal(out[name][k], gene[name][k])
    delta = out["stage2/conv1"]["kernel"] - gene["stage2/conv1"]["kernel"]
    ratio = float(jnp.std(delta) / jnp.std(gene["stage2/conv1"]["kernel"]))
    assert 0.07 < ratio < 0.13  # sigma relative to the tensor's std
    # A constant tensor (std 0) is left as is.
    np.testing.assert_array_equal(
        out["stage2/conv1"]["bias"], gene["stage2/conv1"]["bias"]
    )


def test_mutate_rate_applies_per_tensor():
    gene = _learngene(jax.random.key(0))
    changed = []
    for seed in range(40):
        out = mutate(jax.random.key(seed), gene, sigma=0.1, rate=0.5)
        changed.append(
            not np.array_equal(
                out["stage1/conv1"]["kernel"], gene["stage1/conv1"]["kernel"]
            )
        )
    assert 8 < sum(changed) < 32


def test_reproduce_keeps_size_elite_and_lineage():
    genes = _learngene(jax.random.key(0), pop=6)
    fitness = jnp.array([0.2, 0.9, 0.1, 0.5, 0.4, 0.3])
    nxt, parents = jax.jit(
        reproduce, static_argnames=("tournament_size", "sigma", "rate")
    )(jax.random.key(2), genes, fitness, tournament_size=3, sigma=0.1, rate=1.0)
    assert parents.shape == (6,)
    assert jax.tree.map(lambda x: x.shape, nxt) == jax.tree.map(
        lambda x: x.shape, genes
    )
    assert int(parents[0]) == 1
    jax.tree.map(lambda n, g: np.testing.assert_array_equal(n[0], g[1]), nxt, genes)
    # Children are mutated copies of their recorded parents.
    for i in range(1, 6):
        p = int(parents[i])
        np.testing.assert_array_equal(
            nxt["stage1/conv1"]["mean"][i], genes["stage1/conv1"]["mean"][p]
        )
        assert not np.array_equal(
            nxt["stage1/conv1"]["kernel"][i], genes["stage1/conv1"]["kernel"][p]
        )


def test_no_selection_draws_parents_whatever_the_fitness():
    genes = _learngene(jax.random.key(0), pop=6)
    key = jax.random.key(3)
    runs = [
        reproduce(
            key,
            genes,
            fitness,
            tournament_size=3,
            sigma=0.1,
            rate=0.5,
            selection="none",
        )[1]
        for fitness in (jnp.arange(6.0), -jnp.arange(6.0), jnp.full(6, jnp.nan))
    ]
    for parents in runs:
        np.testing.assert_array_equal(parents, runs[0])
        assert (
            parents.shape == (6,) and 0 <= int(parents.min()) <= int(parents.max()) < 6
        )
    # Over many keys every member becomes a parent, the fittest no more often than others.
    counts = np.zeros(6)
    for seed in range(200):
        _, parents = reproduce(
            jax.random.key(seed),
            genes,
            jnp.arange(6.0),
            tournament_size=3,
            sigma=0.1,
            rate=0.5,
            selection="none",
        )
        counts += np.bincount(np.asarray(parents), minlength=6)
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def test_reproduce_is_traced_once_for_every_generation():
    genes = _learngene(jax.random.key(0), pop=6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def next_generation(key, genes, fitness):
        return reproduce(key, genes, fitness, tournament_size=3, sigma=0.1, rate=0.5)

    for seed in range(3):
        key = jax.random.key(seed)
        genes, parents = next_generation(key, genes, jax.random.uniform(key, (6,)))
        chex.assert_shape(parents, (6,))
    chex.assert_tree_all_finite(genes)


# --------------------------------------------------------------------------- life genes


def test_life_genes_start_spread_around_their_values_and_inherit_with_the_parent():
    from gtl_jax.operators import inherit_life_genes, init_life_genes

    values = {"lr": 0.05, "momentum": 0.9}
    genes = init_life_genes(jax.random.key(0), values, 64, spread=2.0)
    assert float(genes["lr"].min()) >= 0.025 and float(genes["lr"].max()) <= 0.1
    assert float(genes["lr"].std()) > 0.005  # spread, not constant
    # Momentum evolves through 1 - momentum: 0.9 spreads to [0.8, 0.95], never to 1.
    assert 0.8 - 1e-6 <= float(genes["momentum"].min())
    assert float(genes["momentum"].max()) <= 0.95 + 1e-6
    same = init_life_genes(jax.random.key(0), values, 64, spread=1.0)
    np.testing.assert_allclose(same["lr"], 0.05, rtol=1e-6)

    parents = jax.random.randint(jax.random.key(1), (64,), 0, 64)
    plain = inherit_life_genes(jax.random.key(2), genes, parents, sigma=0.0)
    chex.assert_trees_all_equal(plain, {k: v[parents] for k, v in genes.items()})
    explored = inherit_life_genes(jax.random.key(2), genes, parents, sigma=0.2)
    again = inherit_life_genes(jax.random.key(2), genes, parents, sigma=0.2)
    chex.assert_trees_all_equal(explored, again)  # same key, same children
    log_ratio = np.log(explored["lr"] / genes["lr"][parents])
    assert log_ratio[0] == 0.0  # slot 0 (the elite) keeps its parent's genes
    assert 0.12 < float(np.std(log_ratio[1:])) < 0.3  # log-normal, sigma 0.2
    assert float(explored["momentum"].max()) < 1.0


def test_life_genes_config_errors_name_the_field():
    for bad, match in (
        ({"life_genes": "lr,dropout"}, "life_genes='lr,dropout': 'dropout' is not"),
        (
            {"life_genes": "momentum", "life_optimizer": "adam"},
            "life_genes='momentum': momentum is a gene of life_optimizer=sgd",
        ),
        ({"life_gene_spread": 0.5}, "life_gene_spread=0.5: must be >= 1"),
        ({"life_gene_sigma": -1.0}, "life_gene_sigma=-1.0: must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            EvolutionConfig(**bad)
    assert EvolutionConfig(life_genes=" momentum , lr").gene_names == ("lr", "momentum")


# --------------------------------------------------------------------------- selection statistics


def test_tournaments_never_select_below_the_mean_and_random_parents_do_on_average():
    # Tournament parents: the elite, then each group's winner about k times, so their mean
    # fitness is at least the population's (differential >= 0). The no-selection control's
    # parents are drawn uniformly: its differential is 0 in expectation.
    genes = _learngene(jax.random.key(0), pop=9)
    differentials = {"tournament": [], "none": []}
    for seed in range(40):
        key = jax.random.key(seed)
        fitness = jax.random.uniform(jax.random.fold_in(key, 1), (9,))
        for selection in differentials:
            _, parents = reproduce(
                key,
                genes,
                fitness,
                tournament_size=3,
                sigma=0.0,
                rate=0.0,
                selection=selection,
            )
            stats = selection_statistics(fitness, parents, fitness)
            differentials[selection].append(float(stats["selection_differential"]))
            assert float(stats["response"]) == 0.0
    assert min(differentials["tournament"]) >= -1e-6
    assert np.mean(differentials["tournament"]) > 0.1
    assert abs(np.mean(differentials["none"])) < 0.05


def test_selection_statistics_ignore_diverged_members_and_start_undefined():
    fitness = jnp.array([0.2, jnp.nan, 0.6, 0.4])
    stats = selection_statistics(
        fitness, jnp.array([2, 2, 0, 3]), jnp.full((4,), jnp.nan)
    )
    np.testing.assert_allclose(stats["selection_differential"], 0.45 - 0.4, atol=1e-6)
    assert np.isnan(stats["response"])  # no previous generation


# --------------------------------------------------------------------------- the pure generation


@pytest.fixture(scope="module")
def tiny(omniglot):
    """3 VGG11 x1/16 on the first 20 classes of each split, a few steps each, and the first
    two generations of the pure step (jitted once)."""
    from gtl_jax.descendants import Recipe
    from gtl_jax.evolution import Evolution, EvolutionConfig
    from gtl_jax.learngene import make_spec
    from gtl_jax.models import build_model

    config = EvolutionConfig(
        pop_size=3,
        tournament_size=3,
        life_way=5,
        life_steps=2,
        num_critics=2,
        critic_steps=1,
    )
    model = build_model("vgg11", 5, width=1 / 16)
    train, val = (jnp.asarray(omniglot[s].images[:20]) for s in ("train", "val"))
    recipe = Recipe(steps=1, eval_every=1)
    evo = Evolution(model, model, make_spec(model, 0.45, 1), config, recipe, train, val)
    key = jax.random.key(0)
    state = evo.init(key)
    step = jax.jit(chex.assert_max_traces(evo.step, n=1))
    states, metrics = [state], []
    for _ in range(2):
        state, m = step(key, state, evo.pools)
        states.append(state)
        metrics.append(m)
    return evo, key, states, metrics


def _max_difference(a, b) -> float:
    return max(
        float(
            jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)))
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_pure_generation_is_jitted_once_for_every_generation(tiny):
    evo, _, states, metrics = tiny  # assert_max_traces: a retrace would have raised
    assert [int(s.generation) for s in states] == [0, 1, 2]
    assert [int(m["generation"]) for m in metrics] == [1, 2]
    m = metrics[1]
    chex.assert_shape([m["fitness"], m["scores"], m["parents"]], (3,))
    assert m["fitness_max"] == m["fitness"].max() and m["parents"][0] == m["best_index"]
    assert 0.0 <= float(m["fitness_mean"]) <= 1.0 and int(m["diverged"]) == 0
    # The state of the pure function is the state host executors checkpoint.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        states[2], evo.init(jax.random.key(1))
    )


def test_each_generation_reports_its_selection_differential_and_response(tiny):
    from gtl_jax.evolution import host_metrics

    first, second = (host_metrics(m) for m in tiny[3])
    assert np.isnan(first["response"])
    np.testing.assert_allclose(
        second["response"], second["fitness_mean"] - first["fitness_mean"], atol=1e-6
    )
    fitness = np.asarray(second["fitness"])
    np.testing.assert_allclose(
        second["selection_differential"],
        fitness[second["parents"]].mean() - fitness.mean(),
        atol=1e-6,
    )


@pytest.mark.slow
def test_life_genes_set_each_hosts_optimiser_and_follow_the_lineage(tiny):
    import dataclasses

    from gtl_jax.evolution import Evolution

    evo = tiny[0]
    config = dataclasses.replace(evo.config, life_genes="lr", life_gene_sigma=0.2)
    genes = Evolution(
        evo.life_model,
        evo.critic_model,
        evo.spec,
        config,
        evo.critic_recipe,
        evo.train_images,
        evo.val_images,
    )
    key = jax.random.key(0)
    state = genes.init(key)
    # Without life genes, generation 0's learngenes are the same: their stream is apart.
    chex.assert_trees_all_equal(state.learngenes, evo.init(key).learngenes)
    # A host with a learning rate of ~0 leaves its circuit's kernels as it got them.
    state = state.replace(life_genes={"lr": jnp.array([1e-12, 0.05, 0.05])})
    trained = genes.evaluate(key, state).trained
    moved = [
        max(
            float(
                jnp.abs(
                    trained[n]["kernel"][i] - state.learngenes[n]["kernel"][i]
                ).max()
            )
            for n in trained
        )
        for i in range(3)
    ]
    assert moved[0] < 1e-6 < 1e-3 < min(moved[1:])
    new, metrics = jax.jit(genes.step)(key, state, genes.pools)
    parents = np.asarray(metrics["parents"])
    lived = np.asarray(state.life_genes["lr"])
    np.testing.assert_array_equal(metrics["life_genes/lr"], lived)
    child = np.asarray(new.life_genes["lr"])
    assert child[0] == lived[parents[0]]
    assert np.all(child[1:] != lived[parents[1:]])  # explored


@pytest.mark.slow
def test_scan_of_two_generations_equals_two_calls(tiny):
    evo, key, states, metrics = tiny
    run = jax.jit(evo.run, static_argnames="generations")
    state, stacked = run(key, states[0], evo.pools, generations=2)
    chex.assert_trees_all_close(state, states[2], rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(
        {k: stacked[k][1] for k in ("fitness", "parents", "scores")},
        {k: metrics[1][k] for k in ("fitness", "parents", "scores")},
    )


@pytest.mark.slow
def test_vmap_over_seeds_equals_each_seed_alone(tiny):
    import functools

    evo = tiny[0]
    evolve = functools.partial(evo.evolve, generations=1)
    keys = jnp.stack([jax.random.key(3), jax.random.key(4)])
    both, both_metrics = jax.jit(jax.vmap(evolve, in_axes=(0, None)))(keys, evo.pools)
    alone = jax.jit(evolve)
    for i in range(2):
        state, metrics = alone(keys[i], evo.pools)
        # Batched convs sum in another order: float rounding, nothing more.
        assert _max_difference(jax.tree.map(lambda x, i=i: x[i], both), state) < 1e-4
        np.testing.assert_allclose(
            both_metrics["fitness"][i], metrics["fitness"], atol=1e-6
        )
        np.testing.assert_array_equal(both_metrics["parents"][i], metrics["parents"])


def test_host_execution_computes_the_pure_generation(tiny):
    # The host loop (one compiled member step at a time, the CPU form) and the pure vmapped
    # generation run the same per-member functions: equal up to float rounding, and a
    # rounding can flip at most one critic query (1/75 of a critic's accuracy).
    from gtl_jax.evolution import host_metrics
    from gtl_jax.executors import HostExecutor

    evo, key, states, metrics = tiny
    executor = HostExecutor(evo, "loop")
    state = states[0]
    for g in range(2):
        state, logged = executor.generation(key, state)
        pure = host_metrics(metrics[g])
        np.testing.assert_allclose(
            logged["fitness"], pure["fitness"], atol=1 / 75 + 1e-6
        )
        if logged["parents"] != pure["parents"]:
            break  # a flipped query chose another winner as fit: lineages part here
        assert _max_difference(state.learngenes, states[g + 1].learngenes) < 1e-4
        assert set(logged) == set(pure)
