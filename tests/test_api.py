"""The API as researchers call it (issue 15, item 5): images of the wrong dtype are refused,
not silently scaled; the public names are exported and documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

import gtl_jax
from gtl_jax.data import to_float
from gtl_jax.descendants import Recipe
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.experiment import fixed_episodes
from gtl_jax.models import build_model
from gtl_jax.population import init_network, make_optimizer, predict, train_step


def test_uint8_images_are_divided_by_255():
    x = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(to_float(x), [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(to_float)(jnp.asarray(x)), [0.0, 0.2, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16, np.int32])
def test_other_dtypes_are_refused_also_under_jit(dtype):
    x = np.full((2, 2), 0.5).astype(dtype)
    for fn in (to_float, jax.jit(to_float), jax.vmap(to_float)):
        with pytest.raises(TypeError, match="images must be uint8 in \\[0, 255\\]"):
            fn(x)


def test_float_images_in_0_1_are_an_error_not_chance_accuracy():
    """Float images in [0, 1] were divided by 255 again: near-black inputs, chance accuracy,
    no error. Every entry point that takes images refuses them now."""
    model = build_model("vgg11", 5, width=1 / 16)
    tx = make_optimizer("adam", 1e-3)
    state = init_network(model, tx, jax.random.key(0), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))  # float32 in [0, 1]
    y = jnp.arange(5, dtype=jnp.int32)
    with pytest.raises(TypeError, match="uint8"):
        jax.jit(lambda s, x: train_step(model, tx, s, x, y))(state, x)
    with pytest.raises(TypeError, match="uint8"):
        predict(model, state.params, state.batch_stats, x)
    # The same images as uint8 are fine.
    images = jnp.round(x * 255).astype(jnp.uint8)
    _, loss = jax.jit(lambda s, x: train_step(model, tx, s, x, y))(state, images)
    assert np.isfinite(float(loss))

    pool = jax.random.uniform(jax.random.key(2), (5, 4, 28, 28, 1))
    episodes, keys = fixed_episodes(
        jax.random.key(3), pool, episodes=2, n_way=5, k_shot=1, n_query=2
    )
    evaluator = DescendantEvaluator(model, Recipe(steps=1, eval_every=1), n_way=5)
    with pytest.raises(TypeError, match="uint8"):
        evaluator(keys, episodes, None)


NEW_PUBLIC = ("pretrain", "PretrainConfig", "descendant_recipe", "configure_jax")


@pytest.mark.parametrize("name", NEW_PUBLIC)
def test_pretraining_recipe_and_jax_setup_are_public_and_documented(name):
    assert name in gtl_jax.__all__
    obj = getattr(gtl_jax, name)
    assert inspect.getdoc(obj) and len(inspect.getdoc(obj)) > 80, name


def test_every_public_name_resolves_and_importing_loads_no_command_line():
    for name in gtl_jax.__all__:
        assert getattr(gtl_jax, name) is not None, name
    assert "Returns:" in inspect.getdoc(gtl_jax.parameter_share)
    for key in ("gene_params", "share_of_conv", "share_of_network"):
        assert key in inspect.getdoc(gtl_jax.parameter_share)
    # configure_jax and descendant_recipe come from gtl_jax.experiment, loaded on first
    # use; no command is imported.
    check = (
        "import sys, gtl_jax; before = 'gtl_jax.experiment' in sys.modules; "
        "gtl_jax.configure_jax; print(before, 'gtl_jax.experiment' in sys.modules, "
        "any(f'gtl_jax.{m}' in sys.modules for m in ('evolve', 'inherit', 'study')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == ["False", "True", "False"]


def test_descendant_recipe_reads_the_nested_config():
    from gtl_jax.experiment import load_config

    c = load_config("omniglot:smoke")
    assert gtl_jax.descendant_recipe(c) == Recipe(steps=2, eval_every=1)
    assert gtl_jax.descendant_recipe(c.to_dict()) == Recipe(steps=2, eval_every=1)
