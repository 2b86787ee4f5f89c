"""Training-time augmentation presets: pure, jittable functions of a key and a uint8 batch.

This module owns the "light augmentation" of lifetime learning. A preset is
applied on the device inside the compiled train step (``population.train_step(...,
augment_fn=...)``), before the images become floats, so it costs no host round trip:

- ``"none"``: the identity; no key is drawn, so a run without augmentation consumes exactly the
  random stream it did before augmentation existed (Omniglot: its characters are not mirror-
  or shift-invariant in a useful way).
- ``"crop_flip"``: pad each image with ``S // 8`` zero pixels a side (4 at 32x32, 10 at 84x84),
  crop a random S x S window, and flip it left-right with probability 1/2 (CIFAR-FS,
  miniImageNet; the usual few-shot recipe).

Normalisation is the same for every dataset: ``uint8 / 255`` (``pool.to_float``). The models
put BatchNorm after their first conv, which absorbs a per-channel mean and scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "crop_flip")
# The preset each dataset's paper config uses.
DATASET_AUGMENT = {
    "omniglot": "none",
    "cifar_fs": "crop_flip",
    "mini_imagenet": "crop_flip",
    "imagenet": "crop_flip",
    "npz": "none",
}


def crop_padding(image_size: int) -> int:
    """Pixels of zero padding a side for ``crop_flip``: 4 at 32x32, proportional elsewhere."""
    return max(1, image_size // 8)


def random_crop_flip(key: jax.Array, images: jax.Array, *, pad: int) -> jax.Array:
    """Random crop with zero padding, then a random horizontal flip, per image.

    Args:
      key: PRNG key.
      images: u8[B, H, W, Ch].
      pad: P, zero pixels added on each side before cropping an H x W window.

    Returns:
      u8[B, H, W, Ch]; image b is ``pad(images[b])[dy:dy+H, dx:dx+W]`` with ``dy, dx`` uniform
      in ``[0, 2P]``, mirrored left-right with probability 1/2.
    """
    b, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (b,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image, offset, flip):
        window = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, window[:, ::-1], window)

    return jax.vmap(one)(padded, offsets, flips)


def augment_fn(
    name: str, image_size: int
) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """The preset ``name`` as ``fn(key, images) -> images``, or None for ``"none"``.

    None (rather than an identity function) tells the train step to draw no key at all.
    """
    if name == "none":
        return None
    if name == "crop_flip":
        return functools.partial(random_crop_flip, pad=crop_padding(image_size))
    raise ValueError(
        f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}"
    )
