"""population_map: the strategies agree, the loop compiles once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.executors import population_map, resolve_strategy
from gtl_jax.models import build_model
from gtl_jax.population import init_network, make_optimizer, stack, train_step


def test_auto_strategy_per_backend():
    assert resolve_strategy("auto", "cpu") == "loop"
    assert resolve_strategy("auto", "gpu") == "vmap"
    assert resolve_strategy("auto", "tpu") == "vmap"
    with pytest.raises(ValueError, match="strategy"):
        resolve_strategy("pmap")


def test_strategies_agree_on_a_train_step():
    model = build_model("vgg11", 3, width=1 / 16)
    tx = make_optimizer("sgd", 0.1, weight_decay=1e-4)
    keys = jax.random.split(jax.random.key(0), 3)
    state = stack([init_network(model, tx, k, (28, 28, 1)) for k in keys])
    x = jax.random.randint(jax.random.key(1), (3, 4, 28, 28, 1), 0, 256).astype(
        jnp.uint8
    )
    y = jnp.array([[0, 1, 2, 0]] * 3)
    step = functools.partial(train_step, model, tx)
    outs = {
        s: population_map(step, (0, 0, 0), strategy=s)(state, x, y)
        for s in ("vmap", "loop")
    }
    # carry=0: the state is donated and, in the loop, updated in place member by member.
    for s in ("vmap", "loop"):
        donated = jax.tree.map(jnp.copy, state)
        outs[s + "_carry"] = population_map(step, (0, 0, 0), strategy=s, carry=0)(
            donated, x, y
        )
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(donated)), s
    for s in ("loop", "vmap_carry", "loop_carry"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
            outs["vmap"],
            outs[s],
        )
    # Members are independent: member 1 alone gives member 1's result.
    single, loss = jax.jit(step)(jax.tree.map(lambda a: a[1], state), x[1], y[1])
    np.testing.assert_allclose(loss, outs["loop"][1][1], rtol=1e-5)


def test_loop_compiles_one_member_function_not_one_per_member():
    fn = population_map(lambda a, b: a * b + 1.0, (0, None), strategy="loop")
    for _ in range(2):
        out = fn(jnp.arange(9, dtype=jnp.float32), jnp.float32(2.0))
        np.testing.assert_array_equal(out, 2.0 * np.arange(9) + 1.0)
    assert fn.member._cache_size() == 1  # the member index is traced


def test_carry_must_be_a_mapped_argument():
    for strategy in ("loop", "vmap"):
        with pytest.raises(ValueError, match="carry=1"):
            population_map(lambda a, b: (a, b), (0, None), strategy=strategy, carry=1)
