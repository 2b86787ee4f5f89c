"""Mixed precision (``build_model(..., dtype=jnp.bfloat16)``): bfloat16 compute, float32 state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.experiment import load_config
from gtl_jax.models import PRECISIONS, build_model
from gtl_jax.population import init_network, make_optimizer, train_step

# ResNet-12 repeats each check on a second architecture (the slow tier).
CASES = [("vgg11", 28), pytest.param("resnet12", 16, marks=pytest.mark.slow)]


def one_step(model, size: int):
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    state = init_network(model, tx, jax.random.key(0), (size, size, 1))
    x = jax.random.randint(jax.random.key(1), (4, size, size, 1), 0, 256, jnp.int32)
    x, y = x.astype(jnp.uint8), jnp.arange(4, dtype=jnp.int32) % 5
    step = jax.jit(lambda state, x, y: train_step(model, tx, state, x, y))
    return step, state, x, y


def dtypes_of(tree) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)}


@pytest.mark.parametrize("name,size", CASES)
def test_float32_default_is_unchanged(name, size):
    """No dtype and dtype=float32 build the same network: same jaxpr, same numbers, no bf16."""
    default = one_step(build_model(name, 5, width=1 / 16), size)
    explicit = one_step(build_model(name, 5, width=1 / 16, dtype=jnp.float32), size)
    jaxpr = str(jax.make_jaxpr(default[0])(*default[1:]))
    assert jaxpr == str(jax.make_jaxpr(explicit[0])(*explicit[1:]))
    assert "bf16" not in jaxpr
    for a, b in zip(
        jax.tree.leaves(default[0](*default[1:])),
        jax.tree.leaves(explicit[0](*explicit[1:])),
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name,size", CASES)
def test_bfloat16_step_keeps_float32_state(name, size):
    step, state, x, y = one_step(
        build_model(name, 5, width=1 / 16, dtype=jnp.bfloat16), size
    )
    new_state, loss = step(state, x, y)
    assert loss.dtype == jnp.float32
    # Master parameters, optimiser state and BatchNorm running statistics stay float32.
    assert dtypes_of(new_state) == {"float32"}
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Every conv (lax.conv or the shifted-matmul einsums) multiplies bfloat16 operands.
    jaxpr = jax.make_jaxpr(step)(state, x, y)
    products = [
        e
        for e in _equations(jaxpr.jaxpr)
        if e.primitive.name in ("conv_general_dilated", "dot_general")
    ]
    assert products
    conv_products = [e for e in products if e.invars[0].aval.ndim == 4]
    assert conv_products
    assert {str(v.aval.dtype) for e in conv_products for v in e.invars} == {"bfloat16"}


def _equations(jaxpr):
    """Every equation of a jaxpr, including those of nested jaxprs (jit, custom_jvp, cond)."""
    for e in jaxpr.eqns:
        yield e
        for param in e.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)


@pytest.mark.parametrize("name,size", CASES)
def test_bfloat16_activations_float32_logits(name, size):
    model = build_model(name, 5, width=1 / 16, dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(1), (4, size, size, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    assert dtypes_of(variables) == {"float32"}
    logits, state = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    assert logits.dtype == jnp.float32
    assert dtypes_of(state["batch_stats"]) == {"float32"}
    outputs = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    convs = [a for path, a in outputs if "conv" in jax.tree_util.keystr(path)]
    assert len(convs) >= 8  # every conv and BatchNorm output is bfloat16
    assert {str(a.dtype) for a in convs} == {"bfloat16"}
    features = model.apply(variables, x, train=False, return_features=True)
    assert features.dtype == jnp.float32


@pytest.mark.parametrize("name,size", CASES)
def test_bfloat16_loss_close_to_float32(name, size):
    """Same initial params: the bf16 loss is within 2% of the f32 one, the step alike."""
    f32 = one_step(build_model(name, 5, width=1 / 16), size)
    bf16 = one_step(build_model(name, 5, width=1 / 16, dtype=jnp.bfloat16), size)
    for a, b in zip(jax.tree.leaves(f32[1]), jax.tree.leaves(bf16[1])):
        np.testing.assert_array_equal(a, b)  # init does not depend on dtype
    (state32, loss32), (state16, loss16) = f32[0](*f32[1:]), bf16[0](*bf16[1:])
    assert np.isfinite(float(loss16))
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
    # The parameter updates (-lr * gradient, plus weight decay) point the same way. Batch-4
    # BatchNorm backward cancels a lot, so bf16 rounding shows: cosines measured 0.94-0.99.
    old = np.concatenate([np.ravel(a) for a in jax.tree.leaves(f32[1].params)])

    def update(state):
        return (
            np.concatenate([np.ravel(a) for a in jax.tree.leaves(state.params)]) - old
        )

    u32, u16 = update(state32), update(state16)
    assert np.all(np.isfinite(u16))
    cosine = u32 @ u16 / (np.linalg.norm(u32) * np.linalg.norm(u16))
    assert cosine > 0.9, cosine


def test_precision_field_default_and_choices():
    c = load_config("omniglot")
    assert c.model.precision == "float32"
    assert PRECISIONS[c.model.precision] == jnp.float32
    assert set(PRECISIONS) == {"float32", "bfloat16"}


def test_precision_field_reaches_the_evolve_cli_and_bad_values_are_refused(
    tmp_path, capsys
):
    from gtl_jax.evolve import main

    code = main(
        [
            "--config=configs/omniglot.py:smoke",
            "--config.model.precision=float16",
            "--workdir",
            str(tmp_path / "w"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "config field model.precision='float16'" in err, err
    assert not (tmp_path / "w").exists()


def test_config_precision_sets_the_models_computation_dtype():
    from gtl_jax.experiment import model_of

    c = load_config("omniglot")
    assert model_of(c, 5).dtype == jnp.float32
    c.model.precision = "bfloat16"
    assert model_of(c, 5).dtype == jnp.bfloat16
