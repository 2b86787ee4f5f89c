"""Attention rollout maps of ViTs and their share on the foreground."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax import attention
from gtl_jax.models import build_model


def test_uniform_attention_rolls_out_to_a_uniform_map():
    n = 10  # the class token and 9 patches
    uniform = jnp.full((2, 3, n, n), 1.0 / n)
    out = attention.rollout([uniform, uniform, uniform])
    chex.assert_shape(out, (2, n - 1))
    np.testing.assert_allclose(out, 1.0 / (n - 1), rtol=1e-6)


def test_rollout_follows_the_class_token_to_the_patch_it_attends():
    n, target = 5, 3
    uniform = np.full((1, 2, n, n), 1.0 / n, np.float32)
    focused = uniform.copy()
    focused[:, :, 0] = 0.0
    focused[:, :, 0, target] = 1.0  # the class token reads one patch only
    out = np.asarray(attention.rollout([jnp.asarray(uniform), jnp.asarray(focused)]))
    assert out[0].argmax() == target - 1
    assert out[0, target - 1] > 0.5
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


def test_vit_maps_are_one_per_patch_and_sum_to_one():
    model = build_model("vit_fs", 5, width=0.25)
    images = jax.random.randint(jax.random.key(0), (3, 28, 28, 1), 0, 256).astype(
        jnp.uint8
    )
    params = model.init(jax.random.key(1), images.astype(jnp.float32), train=False)[
        "params"
    ]
    maps = attention.maps(model, params, images)
    chex.assert_shape(maps, (3, 7, 7))
    chex.assert_tree_all_finite(maps)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)


def test_foreground_share_of_a_map_on_the_ink_is_one():
    images = np.zeros((2, 8, 8, 1), np.uint8)
    images[0, 1, 1] = 255  # patch (0, 0) of 4x4 patches
    images[1, 5:7, 5:7] = 200  # patch (1, 1)
    mask = attention.foreground(jnp.asarray(images), 4)
    np.testing.assert_array_equal(
        mask, [[[True, False], [False, False]], [[False, False], [False, True]]]
    )
    on_ink = mask.astype(jnp.float32)
    uniform = jnp.full((2, 2, 2), 0.25)
    inside, area = attention.foreground_share(on_ink, mask)
    np.testing.assert_allclose(inside, 1.0)
    np.testing.assert_allclose(area, 0.25)
    inside, _ = attention.foreground_share(uniform, mask)
    np.testing.assert_allclose(inside, 0.25)  # a uniform map: the area
