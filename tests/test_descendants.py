from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.build import sample_episodes
from gtl_jax.data import sample_episode
from gtl_jax.descendants import (
    Recipe,
    class_means,
    fine_tune,
    mean_confidence,
    new_descendant,
    prototype_logits,
)
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.experiment import descendant_recipe, fixed_episodes, load_config
from gtl_jax.learngene import extract_learngene, make_spec
from gtl_jax.models import build_model
from gtl_jax.population import predict


def test_confidence_interval_by_hand():
    values = [0.2, 0.4, 0.6, 0.8]
    mean = 0.5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)  # 0.2236...
    m, half = mean_confidence(values)
    assert m == pytest.approx(0.5)
    assert half == pytest.approx(1.96 * std / 2)
    assert half == pytest.approx(0.21913, abs=1e-5)


def test_prototype_head_equals_nearest_prototype():
    model = build_model("vgg11", 5, width=1 / 16)
    images = jax.random.randint(jax.random.key(0), (8, 6, 28, 28, 1), 0, 256).astype(
        jnp.uint8
    )
    episode = sample_episode(jax.random.key(1), images, n_way=5, k_shot=2, n_query=3)
    state = new_descendant(
        model, jax.random.key(2), episode, None, Recipe(head="prototype"), n_way=5
    )
    logits = predict(model, state.params, state.batch_stats, episode.query_x)
    support = predict(
        model, state.params, state.batch_stats, episode.support_x, return_features=True
    )
    query = predict(
        model, state.params, state.batch_stats, episode.query_x, return_features=True
    )
    expected = prototype_logits(query, class_means(support, episode.support_y, 5))
    # Equal up to a per-row constant (|f|^2), so the same differences between classes.
    np.testing.assert_allclose(
        logits - logits[:, :1], expected - expected[:, :1], rtol=1e-3, atol=1e-3
    )
    zero = new_descendant(
        model, jax.random.key(2), episode, None, Recipe(head="zero"), n_way=5
    )
    assert not np.any(zero.params["head"]["kernel"])


def test_the_pool_is_an_argument_of_the_episode_program_not_a_constant():
    """Closed over, the pool was baked into the program (Omniglot's test split: 20.7 M
    characters of HLO, 4.0 s to compile vs 2.9 s, and XLA's "Constant folding an
    instruction is taking > 1s" lines)."""
    images = jnp.zeros((100, 20, 28, 28, 1), jnp.uint8)  # 1.6 MB
    keys = jax.random.split(jax.random.key(0), 3)
    text = sample_episodes.lower(keys, images, n_way=5, k_shot=1, n_query=5).as_text()
    main = next(line for line in text.splitlines() if "@main(" in line)
    assert ": tensor<100x20x28x28x1xui8>" in main  # an argument of the program
    assert len(text) < 100_000, len(text)


def test_episodes_are_identical_for_the_same_seed_and_valid(omniglot):
    images = jnp.asarray(omniglot["test"].images)
    a, ka = fixed_episodes(
        jax.random.key(7), images, episodes=4, n_way=5, k_shot=1, n_query=15
    )
    b, kb = fixed_episodes(
        jax.random.key(7), images, episodes=4, n_way=5, k_shot=1, n_query=15
    )
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(jax.random.key_data(ka), jax.random.key_data(kb))
    assert a.support_x.shape == (4, 5, 28, 28, 1) and a.query_x.shape == (
        4,
        75,
        28,
        28,
        1,
    )
    np.testing.assert_array_equal(a.support_y[0], np.arange(5))
    # Support and query images of an episode are distinct draws.
    for e in range(4):
        for s in np.asarray(a.support_x[e]):
            assert not any(np.array_equal(s, q) for q in np.asarray(a.query_x[e]))


def test_evaluator_learngene_vs_scratch_same_keys(omniglot):
    """Both methods run on the same episodes and keys; a learngene changes the start, and
    step 0 of the curve is the untrained head's accuracy."""
    model = build_model("vgg11", 5, width=1 / 16)
    images = jnp.asarray(omniglot["test"].images)
    episodes, keys = fixed_episodes(
        jax.random.key(0), images, episodes=3, n_way=5, k_shot=1, n_query=5
    )
    recipe = Recipe(steps=2, eval_every=1)
    evaluator = DescendantEvaluator(model, recipe, n_way=5)
    variables = model.init(jax.random.key(9), jnp.zeros((1, 28, 28, 1)), train=False)
    gene = extract_learngene(
        make_spec(model, 0.45, 1), variables["params"], variables["batch_stats"]
    )
    with_gene = evaluator(keys, episodes, gene)
    scratch = evaluator(keys, episodes, None)
    again = evaluator(keys, episodes, None)
    assert with_gene.curve.shape == (3, 3) and with_gene.losses.shape == (2, 3)
    np.testing.assert_array_equal(scratch.final, again.final)
    assert not np.array_equal(with_gene.losses, scratch.losses)
    assert np.all((with_gene.final >= 0) & (with_gene.final <= 1))


@pytest.mark.parametrize(
    "head", ["random", pytest.param("prototype", marks=pytest.mark.slow)]
)
def test_fine_tune_is_one_pure_program_equal_to_the_evaluators(head, omniglot):
    """The pure ``fine_tune``, jitted and vmapped over episodes, computes what the CPU
    evaluator computes one descendant at a time, up to float rounding (a rounding flips at
    most one of the 25 queries)."""
    model = build_model("vgg11", 5, width=1 / 16)
    images = jnp.asarray(omniglot["test"].images)
    episodes, keys = fixed_episodes(
        jax.random.key(2), images, episodes=3, n_way=5, k_shot=1, n_query=5
    )
    recipe = Recipe(head=head, steps=3, eval_every=2)
    variables = model.init(jax.random.key(9), jnp.zeros((1, 28, 28, 1)), train=False)
    gene = extract_learngene(
        make_spec(model, 0.45, 1), variables["params"], variables["batch_stats"]
    )
    pure = jax.jit(
        jax.vmap(lambda k, e: fine_tune(model, recipe, k, e, gene, n_way=5), (0, 0))
    )(keys, episodes)
    assert pure.curve.shape == (3, len(recipe.curve_steps))  # steps 0, 2, 3
    for strategy in ("loop", "vmap"):
        result = DescendantEvaluator(model, recipe, n_way=5, strategy=strategy)(
            keys, episodes, gene
        )
        np.testing.assert_allclose(result.curve, pure.curve, atol=1 / 25 + 1e-6)
        np.testing.assert_allclose(result.instinct, pure.instinct, atol=1 / 25 + 1e-6)
        np.testing.assert_allclose(result.losses, pure.losses.T, rtol=1e-4, atol=1e-5)


def test_frozen_batch_norm_step_keeps_running_statistics():
    """ "frozen" fine-tunes through the inherited running statistics and leaves them as they
    are; "batch" normalises with the support batch and moves them."""
    from gtl_jax.descendants import frozen_bn_step
    from gtl_jax.population import cross_entropy, make_optimizer, train_step

    model = build_model("vgg11", 5, width=1 / 16)
    images = jax.random.randint(jax.random.key(0), (8, 6, 28, 28, 1), 0, 256).astype(
        jnp.uint8
    )
    episode = sample_episode(jax.random.key(1), images, n_way=5, k_shot=2, n_query=3)
    state = new_descendant(model, jax.random.key(2), episode, None, Recipe(), n_way=5)
    tx = make_optimizer("adam", 1e-3)
    x, y = episode.support_x, episode.support_y
    frozen, loss = frozen_bn_step(model, tx, state, x, y)
    expected = cross_entropy(predict(model, state.params, state.batch_stats, x), y)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    jax.tree.map(np.testing.assert_array_equal, frozen.batch_stats, state.batch_stats)
    assert not np.allclose(
        frozen.params["head"]["kernel"], state.params["head"]["kernel"]
    )
    moved, _ = train_step(model, tx, state, x, y)
    assert not np.allclose(
        moved.batch_stats["stage1"]["conv1"]["bn"]["mean"],
        state.batch_stats["stage1"]["conv1"]["bn"]["mean"],
    )
    with pytest.raises(ValueError, match="batch_norm=.*must be one of"):
        Recipe(batch_norm="sometimes")


def test_recipe_defaults_are_the_default_config():
    """``Recipe()`` is the default config's recipe (``descendant_recipe``), field for field
    (head, optimizer, learning_rate, steps, eval_every, batch_norm)."""

    assert descendant_recipe(load_config("omniglot")) == Recipe()
