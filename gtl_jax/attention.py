"""Where a ViT looks: attention rollout maps of the class token, and how much of them falls on
the object.

``maps`` runs a ViT with ``return_attention=True`` and combines its blocks' attention by
*attention rollout* (Abnar and Zuidema, 2020): each block's weights, averaged over heads, are
mixed half and half with the identity (the residual path) and renormalised, and the blocks'
matrices are multiplied from the first to the last. The class token's row of the product,
over the patch tokens, is the map: how much each patch feeds the features the head reads.

``foreground_share`` measures focus without a picture: the share of a map's mass on patches
that contain foreground pixels, beside the share those patches have of the image (what a
uniform map would give). Pure functions, jittable.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.data.pool import to_float


def rollout(weights: Sequence[jax.Array]) -> jax.Array:
    """The class token's attention rollout over the patches.

    Args:
      weights: every block's attention weights, f32[B, H, N, N] each (token 0 the class
        token), first block first.

    Returns:
      f32[B, N - 1], summing to 1 over the patches of each image.
    """
    n = weights[0].shape[-1]
    eye = jnp.eye(n, dtype=jnp.float32)
    joint = None
    for w in weights:
        a = 0.5 * w.astype(jnp.float32).mean(axis=1) + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a if joint is None else a @ joint
    cls = joint[:, 0, 1:]
    return cls / cls.sum(axis=-1, keepdims=True)


def maps(model: nn.Module, params, images: jax.Array) -> jax.Array:
    """Attention rollout maps of ``images: u8[B, S, S, Ch]``: f32[B, S/p, S/p] (p the patch
    side), each summing to 1."""
    _, weights = model.apply(
        {"params": params}, to_float(images), train=False, return_attention=True
    )
    side = images.shape[1] // model.patch
    return rollout(weights).reshape(images.shape[0], side, side)


def foreground(images: jax.Array, patch: int, threshold: int = 128) -> jax.Array:
    """Which patches hold foreground: bool[B, S/p, S/p], a patch with any pixel (any channel)
    above ``threshold`` (Omniglot's strokes are bright on a dark background)."""
    b, s = images.shape[0], images.shape[1]
    side = s // patch
    bright = (images > threshold).any(axis=-1)
    return bright.reshape(b, side, patch, side, patch).any(axis=(2, 4))


def foreground_share(
    attention: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The share of each map's mass on foreground patches, and the share of patches that are
    foreground (a uniform map's share): f32[B] each."""
    inside = (attention * mask).sum(axis=(1, 2))
    area = mask.mean(axis=(1, 2), dtype=jnp.float32)
    return inside, area
