"""The host executor: a generation driven from the host, one compiled member at a time."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.descendants import Recipe
from gtl_jax.evolution import Evolution, EvolutionConfig, host_metrics
from gtl_jax.executors import HostExecutor
from gtl_jax.learngene import make_spec
from gtl_jax.models import build_model
from gtl_jax.operators import all_finite


def _tiny_executor(omniglot, **overrides) -> HostExecutor:
    """3 VGG11 x1/16 on the first 20 classes of each split, a few steps each."""
    config = EvolutionConfig(
        **{"pop_size": 3, "tournament_size": 3, "life_way": 5, "life_steps": 2}
        | {"num_critics": 1}
        | overrides
    )
    model = build_model("vgg11", 5, width=1 / 16)
    train, val = (jnp.asarray(omniglot[s].images[:20]) for s in ("train", "val"))
    spec = make_spec(model, 0.45, 1)
    recipe = Recipe(steps=1, eval_every=1)
    return HostExecutor(
        Evolution(model, model, spec, config, recipe, train, val), "loop"
    )


@pytest.mark.slow
def test_two_generations_compile_once(omniglot):
    evo = _tiny_executor(omniglot)
    key = jax.random.key(0)
    state = evo.evo.init(key)
    for _ in range(2):
        state, metrics = evo.generation(key, state)
    assert int(state.generation) == 2 and metrics["generation"] == 2
    compiled = {
        "hosts": evo.hosts.member,
        "life_step": evo.life_step.member,
        "extract": evo.extract.member,
        # Critics run member-major: one compiled function per phase for all descendants.
        "critic_init": evo.critics.member_init,
        "critic_instinct": evo.critics.member_instinct,
        "critic_step": evo.critics.member_step,
        "critic_accuracy": evo.critics.member_accuracy,
        "ask": evo.ask,
        "tell": evo.tell,
    }
    for name, fn in compiled.items():
        assert fn._cache_size() == 1, name


@pytest.mark.slow
def test_blocks_of_members_live_as_in_the_whole_population(omniglot):
    # What lets generation split the population between worker processes: a block draws the
    # whole population's keys and tasks, so its members' lives are bit-identical.
    evo = _tiny_executor(omniglot)
    key = jax.random.key(1)
    genes = evo.evo.init(jax.random.key(0)).learngenes
    whole = jax.device_get(evo.evaluate(key, 0, genes))
    blocks = [
        jax.device_get(
            evo.evaluate(
                key, 0, jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], genes), lo, hi
            )
        )
        for lo, hi in ((0, 2), (2, 3))
    ]
    for field in ("fitness", "diverged", "instinct", "life_losses"):
        joined = np.concatenate([getattr(b, field) for b in blocks])
        np.testing.assert_array_equal(getattr(whole, field), joined)
    for a, *parts in zip(
        *map(jax.tree.leaves, [whole.trained] + [b.trained for b in blocks])
    ):
        np.testing.assert_array_equal(a, np.concatenate(parts))


@pytest.mark.parametrize("poison", [jnp.nan, jnp.inf])
@pytest.mark.slow
def test_a_diverging_individual_is_never_selected(poison, omniglot):
    evo = _tiny_executor(omniglot)
    key = jax.random.key(0)
    state = evo.evo.init(key)
    # Individual 1's learngene carries a NaN (or inf): its host's loss and learngene go
    # non-finite.
    layer = sorted(state.learngenes)[0]
    kernel = state.learngenes[layer]["kernel"]
    poisoned = {
        **state.learngenes,
        layer: {
            **state.learngenes[layer],
            "kernel": kernel.at[1, 0, 0, 0, 0].set(poison),
        },
    }
    state, metrics = evo.generation(key, state.replace(learngenes=poisoned))
    assert metrics["diverged"] == 1 and np.isnan(metrics["fitness"][1])
    assert 1 not in metrics["parents"] and metrics["best_index"] != 1
    assert np.isfinite(metrics["fitness_max"])
    assert bool(all_finite(state.learngenes).all())  # the NaN did not spread


@pytest.mark.slow
def test_lineage_score_fixed_critics_and_the_final_choice(omniglot):
    evo = _tiny_executor(omniglot, selection="score", fixed_critics=True, life_steps=0)
    key = jax.random.key(0)
    state = evo.evo.init(key)
    genes = state.learngenes
    state, first = evo.generation(key, state)
    # ECO's score: fitness plus the decayed score of the parent (none in generation 1).
    np.testing.assert_allclose(first["scores"], first["fitness"], rtol=1e-6)
    inherited = np.asarray(first["scores"])[first["parents"]]
    np.testing.assert_allclose(state.scores, inherited, rtol=1e-6)
    # With no lifetime steps a learngene comes out as it went in; with fixed critics the
    # same learngenes get the same fitness in any generation.
    again, second = evo.generation(key, state.replace(learngenes=genes))
    np.testing.assert_allclose(second["fitness"], first["fitness"], atol=1e-6)
    expected = np.asarray(second["fitness"]) + 0.6 * np.asarray(state.scores)
    np.testing.assert_allclose(second["scores"], expected, rtol=1e-5)

    # The final choice: the best re-scored of the fittest candidates, or the fittest.
    index, info = evo.choose_final(key, again, candidates=2, episodes=3)
    assert info["candidates"] == list(np.argsort(-np.asarray(again.fitness))[:2])
    assert index == info["candidates"][int(np.argmax(info["rescored"]))]
    index, info = evo.choose_final(key, again, candidates=1, episodes=3)
    assert index == int(np.argmax(again.fitness)) and info["rule"] == "fittest"


@pytest.mark.slow
def test_no_selection_control_chooses_its_final_learngene_at_random(omniglot):
    evo = _tiny_executor(omniglot, selection="none")
    state = evo.evo.init(jax.random.key(0))
    chosen = {
        evo.choose_final(jax.random.key(s), state, candidates=3, episodes=5)[0]
        for s in range(20)
    }
    assert chosen == {0, 1, 2}


@pytest.mark.slow
@pytest.mark.parametrize(
    "selection,life_genes",
    [("tournament", ""), ("score", ""), ("none", ""), ("tournament", "lr,momentum")],
)
def test_the_host_generation_is_the_core_tell_of_its_evaluation(
    selection, life_genes, omniglot
):
    # Selection, the next state and the metrics exist once, in Evolution.tell: a host
    # generation is tell applied to the host loop's evaluation of the members.
    evo = _tiny_executor(omniglot, selection=selection, life_genes=life_genes)
    key = jax.random.key(2)
    state = evo.init(key)
    state, _ = evo.generation(key, state)  # generation 1: lineage scores exist
    evaluation = evo.evaluate(key, 1, state.learngenes, life_genes=state.life_genes)
    expected, expected_metrics = evo.evo.tell(key, state, jax.device_get(evaluation))
    got, metrics = evo.generation(key, state)
    expected_metrics = host_metrics(expected_metrics)
    assert metrics.keys() == expected_metrics.keys()
    for name in ("generation", "parents", "best_index", "diverged"):
        assert metrics[name] == expected_metrics[name], name
    # Jitted and eager: the same function, XLA may fuse (and round) differently.
    chex.assert_trees_all_close(metrics, expected_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_head_that_does_not_match_the_tasks_is_refused(omniglot):
    with pytest.raises(ValueError, match="life_model has a 5-class head.*life_way=50"):
        _tiny_executor(omniglot, life_way=50)
