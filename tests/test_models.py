from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.models import build_model
from gtl_jax.models.layers import shifted_matmul_conv


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_shifted_matmul_conv_equals_lax_conv(size, kernel_size):
    kx, kk = jax.random.split(jax.random.key(size))
    x = jax.random.normal(kx, (2, size, size, 3))
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, 3, 4))
    expected = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        shifted_matmul_conv(x, kernel), expected, rtol=1e-5, atol=1e-5
    )


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
