from __future__ import annotations

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from gtl_jax.models import VGG, ResNet12, build_model, layers
from gtl_jax.models.layers import (
    Conv,
    ConvBN,
    conv_matmul_kernel_grad,
    lax_conv,
    max_pool_2x2,
    shifted_matmul_conv,
    shifted_matmul_kernel_grad,
)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (5, 5), (2, 4)])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_shifted_matmul_conv_equals_lax_conv(size, kernel_size):
    kx, kk, kc = jax.random.split(jax.random.key(size[0] * 10 + size[1]), 3)
    x = jax.random.normal(kx, (2, *size, 3))
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, 3, 4))
    cotangent = jax.random.normal(kc, (2, *size, 4))

    def lax_conv(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    expected, expected_vjp = jax.vjp(lax_conv, x, kernel)
    got, got_vjp = jax.vjp(shifted_matmul_conv, x, kernel)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Gradients too: each tap reads and writes only its valid region.
    for g, e in zip(got_vjp(cotangent), expected_vjp(cotangent)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("forms", ["cpu", "xla", "auto"])
@pytest.mark.parametrize(
    ("size", "channels", "shifted"),
    [(2, 8, True), (4, 128, False), (4, 256, True), (3, 256, True), (5, 256, False)],
)
def test_conv_takes_shifted_matmuls_on_small_or_wide_small_maps(
    size, channels, shifted, forms
):
    """The CPU forms' rule: maps of at most 4 pixels, or at most 16 with at least 256 input
    channels, take shifted matmuls; the XLA forms never do ("auto" is "cpu" on this CPU);
    every form gives lax.conv's output and gradients."""
    assert layers.uses_shifted_matmuls(size, size, channels) is shifted
    kx, kc = jax.random.split(jax.random.key(channels))
    x = jax.random.normal(kx, (2, size, size, channels))
    cotangent = jax.random.normal(kc, (2, size, size, 3))
    conv = Conv(3, forms=forms)
    variables = conv.init(jax.random.key(0), x)
    calls = []
    with mock.patch.object(
        layers,
        "shifted_matmul_conv",
        lambda *a: calls.append(1) or shifted_matmul_conv(*a),
    ):
        got, got_vjp = jax.vjp(lambda v, x: conv.apply(v, x), variables, x)
    assert bool(calls) is (shifted and forms != "xla")
    expected, expected_vjp = jax.vjp(
        lambda v, x: layers.lax_conv(x, v["params"]["kernel"]), variables, x
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    for g, e in zip(
        jax.tree.leaves(got_vjp(cotangent)), jax.tree.leaves(expected_vjp(cotangent))
    ):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("size", [2, 5, 8])
@pytest.mark.parametrize("cin", [1, 6])
def test_matmul_kernel_grad_equals_lax_conv_grads(size, cin):
    kx, kk, kc = jax.random.split(jax.random.key(size), 3)
    x = jax.random.normal(kx, (3, size, size, cin))
    kernel = jax.random.normal(kk, (3, 3, cin, 4))
    cotangent = jax.random.normal(kc, (3, size, size, 4))
    expected = jax.vjp(lax_conv, x, kernel)[1](cotangent)
    y, vjp = jax.vjp(conv_matmul_kernel_grad, x, kernel)
    np.testing.assert_array_equal(y, lax_conv(x, kernel))
    np.testing.assert_array_equal(
        vjp(cotangent)[0], expected[0]
    )  # lax's input gradient
    np.testing.assert_allclose(vjp(cotangent)[1], expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        shifted_matmul_kernel_grad(x, cotangent, kernel.shape),
        expected[1],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 3), (1, 2, 2, 4)])
def test_reshaped_max_pool_equals_nn_max_pool(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # no ties
    pooled = max_pool_2x2(x, "cpu")
    np.testing.assert_array_equal(pooled, nn.max_pool(x, (2, 2), (2, 2)))
    np.testing.assert_array_equal(max_pool_2x2(x, "xla"), pooled)
    cotangent = jax.random.normal(jax.random.key(1), pooled.shape)

    def grad(forms):
        return jax.grad(lambda x: jnp.vdot(max_pool_2x2(x, forms), cotangent))(x)

    np.testing.assert_array_equal(grad("cpu"), grad("xla"))


def test_reshaped_max_pool_after_relu_same_network_gradient():
    """Ties (ReLU zeros) split the gradient, but the ReLU before the pool discards it."""
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    fast = build_model("vgg11", 5, width=1 / 16, forms="cpu")
    variables = fast.init(jax.random.key(0), x, train=False)
    grads = []
    for pool in (layers.reshaped_max_pool_2x2, layers.xla_max_pool_2x2):
        with mock.patch.object(layers, "reshaped_max_pool_2x2", pool):

            def loss(params):
                logits, _ = fast.apply(
                    {**variables, "params": params},
                    x,
                    train=True,
                    mutable=["batch_stats"],
                )
                return logits.sum()

            grads.append(jax.grad(loss)(variables["params"]))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name,width,size,convs",
    [
        ("vgg11", 1 / 16, 28, 8),
        ("vgg13", 1 / 16, 32, 10),
        ("vgg16", 1 / 16, 28, 13),
        ("resnet12", 1 / 16, 28, 16),
    ],
)
def test_models_shapes_and_named_layers(name, width, size, convs):
    model = build_model(name, 7, width=width)
    x = jnp.zeros((3, size, size, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    assert model.apply(variables, x, train=False).shape == (3, 7)
    graph = model.conv_graph()
    assert len(graph) == convs
    for node in graph:  # every declared layer exists at its path, with its width
        module = variables["params"]
        for part in node.path:
            module = module[part]
        assert module["conv"]["kernel"].shape[-1] == node.channels
        assert module["bn"]["scale"].shape == (node.channels,)
    features = model.apply(variables, x, train=False, return_features=True)
    assert features.shape == (3, graph[-1].channels)


def test_vgg_small_map_form_matches_conv_form():
    """The shifted-matmul path on small maps computes the same network as lax.conv."""
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    # At 28x28 VGG11 has 3x3 and 1x1 maps: all of them take the shifted-matmul path.
    fast = build_model("vgg11", 5, width=1 / 16).clone(small_map_pixels=9)
    slow = fast.clone(small_map_pixels=0)
    variables = fast.init(jax.random.key(0), x, train=False)
    np.testing.assert_allclose(
        fast.apply(variables, x, train=False),
        slow.apply(variables, x, train=False),
        rtol=1e-4,
        atol=1e-5,
    )


def test_unknown_model_lists_known():
    with pytest.raises(ValueError, match="vgg11"):
        build_model("vgg12", 5)


def _outputs_and_grads(model, variables, x, cotangent):
    """A train-mode forward (logits and new batch statistics) and the gradients of
    ``<logits, cotangent>`` with respect to the parameters and the input."""

    def loss(params, x):
        logits, updates = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.vdot(logits, cotangent), (logits, updates)

    (_, (logits, updates)), grads = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True
    )(variables["params"], x)
    features = model.apply(variables, x, train=False, return_features=True)
    return {"logits": logits, "stats": updates, "features": features, "grads": grads}


@pytest.mark.parametrize(
    ("name", "size"),
    [("vgg11", 32), pytest.param("resnet12", 28, marks=pytest.mark.slow)],
)
def test_cpu_and_xla_forms_same_network(name, size):
    """``forms="cpu"`` and ``forms="xla"``: the same parameters (names, shapes, initial
    values), outputs and gradients to float tolerance; ``"auto"`` is ``"cpu"`` on this CPU, bit
    for bit. VGG11 at 32x32 reaches a 2x2 map (shifted matmuls in the CPU forms), ResNet12 at
    28x28 a 1x1 map."""
    assert jax.default_backend() == "cpu"
    kx, kc = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(kx, (4, size, size, 3))
    cotangent = jax.random.normal(kc, (4, 5))
    models = {f: build_model(name, 5, width=1 / 16, forms=f) for f in layers.FORMS}
    inits = {f: m.init(jax.random.key(0), x, train=False) for f, m in models.items()}
    chex.assert_trees_all_equal(inits["cpu"], inits["xla"])
    chex.assert_trees_all_equal(inits["cpu"], inits["auto"])
    run = {
        f: _outputs_and_grads(m, inits["cpu"], x, cotangent) for f, m in models.items()
    }
    chex.assert_trees_all_equal(run["auto"], run["cpu"])
    chex.assert_trees_all_close(run["cpu"], run["xla"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["gpu", "CPU", "", None])
def test_bad_forms_is_one_line_value_error(bad):
    x = jnp.zeros((1, 4, 4, 1))
    attempts = [
        lambda: build_model("vgg11", 5, forms=bad),
        lambda: build_model("resnet12", 5, forms=bad),
        lambda: VGG(5, forms=bad),
        lambda: ResNet12(5, forms=bad),
        lambda: Conv(3, forms=bad),
        lambda: ConvBN(3, forms=bad),
        lambda: max_pool_2x2(x, bad),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match="forms") as error:
            attempt()
        assert "\n" not in str(error.value)
        assert repr(bad) in str(error.value)


def test_vits_are_registered_with_named_layers_and_a_patch_field():
    from gtl_jax.models import VITS

    assert set(VITS) == {"vit_tiny", "vit_small", "vit_fs"}
    model = build_model("vit_fs", 5, width=0.5, patch=7)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False)
    assert set(variables) == {"params"}  # no BatchNorm
    params = variables["params"]
    assert {"embed", "block1", "block6", "norm", "head"} <= set(params)
    assert params["embed"]["pos"].shape == (1, 1 + 4 * 4, 64)  # 4x4 patches of 7
    assert params["block1"]["attn"]["query"]["kernel"].shape == (64, 4, 16)
    logits = model.apply(variables, jnp.zeros((2, 28, 28, 1)), train=False)
    features, attention = model.apply(
        variables, jnp.zeros((2, 28, 28, 1)), train=False, return_attention=True
    )
    assert logits.shape == (2, 5) and features.shape == (2, 64)
    assert len(attention) == 6 and attention[0].shape == (2, 4, 17, 17)
    tiny = build_model("vit_tiny", 10)
    assert (tiny.shape.heads, tiny.shape.dim, tiny.shape.mlp) == (3, 192, 768)
    with pytest.raises(ValueError, match="only ViTs"):
        build_model("vgg11", 5, patch=4)
    with pytest.raises(ValueError, match="patch=5 does not divide"):
        build_model("vit_fs", 5, patch=5).init(
            jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False
        )
