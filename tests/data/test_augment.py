"""Augmentation presets: shapes, determinism, exact crops and flips, 'none' draws no key."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from gtl_jax.data.augment import (
    AUGMENTATIONS,
    DATASET_AUGMENT,
    augment_fn,
    crop_padding,
    random_crop_flip,
)
from gtl_jax.population import init_network, make_optimizer, train_step


class _Tiny(nn.Module):
    """Conv, BatchNorm, head: compiles in a moment."""

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(5, name="head")(x.mean((1, 2)))


def _images(b=6, h=8, w=8, c=3):
    # Values 1..251, distinct when b*h*w*c <= 251, and never 0: the zero padding shows.
    x = np.arange(b * h * w * c).reshape(b, h, w, c) % 251 + 1
    return jnp.asarray(x, jnp.uint8)


def _crops(image: np.ndarray, pad: int):
    """Every (dy, dx, flip) window of the zero-padded image."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy : dy + h, dx : dx + w]
            yield (dy, dx, False), window
            yield (dy, dx, True), window[:, ::-1]


def test_presets():
    assert AUGMENTATIONS == ("none", "crop_flip")
    assert augment_fn("none", 28) is None
    assert DATASET_AUGMENT["omniglot"] == "none"
    assert (
        DATASET_AUGMENT["cifar_fs"] == DATASET_AUGMENT["mini_imagenet"] == "crop_flip"
    )
    assert (crop_padding(32), crop_padding(84), crop_padding(28)) == (4, 10, 3)
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        augment_fn("mixup", 32)


def test_shape_dtype_and_determinism():
    x = _images()
    fn = jax.jit(augment_fn("crop_flip", 8))
    a = fn(jax.random.key(0), x)
    assert a.shape == x.shape and a.dtype == jnp.uint8
    np.testing.assert_array_equal(a, fn(jax.random.key(0), x))
    assert not np.array_equal(a, fn(jax.random.key(1), x))


def test_every_output_is_a_padded_crop_possibly_flipped():
    pad = 2
    x = np.asarray(_images(b=4, h=5, w=5, c=2))
    seen = set()
    for seed in range(20):
        out = np.asarray(
            random_crop_flip(jax.random.key(seed), jnp.asarray(x), pad=pad)
        )
        for b in range(x.shape[0]):
            matches = [
                how for how, crop in _crops(x[b], pad) if np.array_equal(crop, out[b])
            ]
            assert len(matches) == 1, f"image {b} of seed {seed} is no crop"
            seen.add(matches[0])
    # The offsets cover [0, 2P] in both axes, and both flips occur.
    assert {dy for dy, _, _ in seen} == set(range(2 * pad + 1))
    assert {dx for _, dx, _ in seen} == set(range(2 * pad + 1))
    assert {flip for _, _, flip in seen} == {False, True}


def test_hand_made_image():
    # A 1x4 ramp, one channel: with no padding the only change is the flip.
    image = jnp.asarray([[[[1], [2], [3], [4]]]], jnp.uint8)
    outs = {
        tuple(np.asarray(random_crop_flip(jax.random.key(s), image, pad=0)).ravel())
        for s in range(16)
    }
    assert outs == {(1, 2, 3, 4), (4, 3, 2, 1)}
    # With one pixel of padding a shifted window brings in a zero on one side.
    shifted = {
        tuple(
            np.asarray(random_crop_flip(jax.random.key(s), image, pad=1))[0, 0].ravel()
        )
        for s in range(64)
    }
    assert (0, 1, 2, 3) in shifted and (2, 3, 4, 0) in shifted


def test_train_step_with_and_without_augmentation():
    model = _Tiny()
    tx = make_optimizer("sgd", 0.05)
    state = init_network(model, tx, jax.random.key(0), (8, 8, 3))
    x, y = _images(b=6), jnp.arange(6, dtype=jnp.int32) % 5
    step = jax.jit(functools.partial(train_step, model, tx))
    _, plain = step(state, x, y)
    # augment_fn=None is exactly the old step, whatever key is passed.
    _, keyed = step(state, x, y, key=jax.random.key(3))
    assert float(plain) == float(keyed)
    augment = augment_fn("crop_flip", 8)
    aug_step = jax.jit(functools.partial(train_step, model, tx, augment_fn=augment))
    _, a = aug_step(state, x, y, key=jax.random.key(3))
    _, b = aug_step(state, x, y, key=jax.random.key(3))
    assert float(a) == float(b) and float(a) != float(plain)
    with pytest.raises(ValueError, match="needs a key"):
        train_step(model, tx, state, x, y, augment_fn=augment)
