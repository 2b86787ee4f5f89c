"""Vision Transformers: ViT-Tiny, ViT-Small and a few-shot-sized ViT for 28-84 pixel images.

A pre-LayerNorm ViT: patch embedding (a stride-``patch`` conv), a class token and learned
position embeddings, ``depth`` blocks of multi-head self-attention and a GELU MLP, a final
LayerNorm, and a linear head on the class token. Parameters are named by module path, like the
CNNs' layers, so learngene specs and errors address them:

- ``embed/patch`` (``kernel: [p, p, Ch, D]``, ``bias: [D]``), ``embed/cls: [1, 1, D]``,
  ``embed/pos: [1, N + 1, D]``;
- ``block{b}/norm1``, ``block{b}/norm2`` (LayerNorm ``scale``, ``bias``: ``[D]``);
- ``block{b}/attn/{query,key,value}`` (``kernel: [D, H, d]``, ``bias: [H, d]``) and
  ``block{b}/attn/out`` (``kernel: [H, d, D]``, ``bias: [D]``);
- ``block{b}/mlp/fc1`` (``[D, M]``), ``block{b}/mlp/fc2`` (``[M, D]``);
- ``norm``, ``head``.

D = H * d: the width multiplier scales the number of heads H (at least one) and the MLP
width M; the head dimension d is fixed, so a wider ViT has more heads of the same size and a
learngene's heads fit it. There is no BatchNorm: the ``batch_stats`` collection is empty.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.models.layers import check_forms


@dataclasses.dataclass(frozen=True)
class ViTShape:
    """The sizes a width multiplier gives: heads H, head dim d, D = H * d, MLP width M."""

    heads: int
    head_dim: int
    mlp: int
    depth: int

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


class LayerNorm(nn.Module):
    """LayerNorm over the last axis (``scale``, ``bias``: [D]); with ``gene_dims`` k > 0 the
    first k dims are normalised by their own mean and variance and the others by theirs, so
    the first k dims of the output depend on the first k of the input alone: a learngene's
    circuit stays exactly closed."""

    gene_dims: int = 0
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (dim,))
        bias = self.param("bias", nn.initializers.zeros, (dim,))
        x32 = x.astype(jnp.float32)
        k = self.gene_dims
        groups = [x32[..., :k], x32[..., k:]] if 0 < k < dim else [x32]
        normed = jnp.concatenate(
            [
                (g - g.mean(-1, keepdims=True))
                * jax.lax.rsqrt(g.var(-1, keepdims=True) + self.epsilon)
                for g in groups
            ],
            axis=-1,
        )
        return (normed * scale + bias).astype(x.dtype)


class Attention(nn.Module):
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Self-attention of ``x: [B, N, D]``; returns the output and the attention weights
        ``[B, H, N, N]``."""
        dense = lambda name: nn.DenseGeneral(  # noqa: E731
            (self.heads, self.head_dim), dtype=self.dtype, name=name
        )
        q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        out = nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="out")
        return out(y), weights


class MLP(nn.Module):
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class Block(nn.Module):
    shape: ViTShape
    gene_dims: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        norm = lambda name: LayerNorm(self.gene_dims, name=name)  # noqa: E731
        y, weights = Attention(
            self.shape.heads, self.shape.head_dim, self.dtype, name="attn"
        )(norm("norm1")(x))
        x = x + y
        x = x + MLP(self.shape.mlp, self.dtype, name="mlp")(norm("norm2")(x))
        return x, weights


class Embed(nn.Module):
    dim: int
    patch: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(
                f"ViT patch={p} does not divide the {x.shape[1]}x{x.shape[2]} images"
            )
        tokens = nn.Conv(
            self.dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            name="patch",
        )(x)
        tokens = tokens.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        pos = self.param(
            "pos", nn.initializers.normal(0.02), (1, tokens.shape[1] + 1, self.dim)
        )
        cls = jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(tokens.dtype)
        return jnp.concatenate([cls, tokens], axis=1) + pos.astype(tokens.dtype)


class ViT(nn.Module):
    """A Vision Transformer for one network.

    Attributes:
      num_classes: width of the linear head.
      heads, head_dim, mlp_ratio, depth: the base sizes (``heads * head_dim`` is D,
        ``mlp_ratio * D`` the MLP width).
      patch: the side of a patch in pixels (it must divide the image side).
      width: multiplies the number of heads (rounded, at least 1) and so D and M.
      gene_dims: 0: every LayerNorm normalises over all D dims (a learngene's circuit then
        leaks: its dims' statistics include the host's other dims); k > 0: the first k dims
        are normalised by their own statistics (``LayerNorm``), so a learngene of k dims
        (``ViTSpec.k_dim``) is an exactly closed circuit in this network.
      dtype: computation dtype (parameters, LayerNorm statistics, softmax, head: float32).
      forms: accepted for the registry's signature (``gtl_jax.models.layers``); the ViT has
        no layer with a CPU form.
    """

    num_classes: int
    heads: int = 8
    head_dim: int = 16
    mlp_ratio: float = 2.0
    depth: int = 6
    patch: int = 4
    width: float = 1.0
    gene_dims: int = 0
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    def __post_init__(self):
        check_forms(self.forms)
        super().__post_init__()

    @property
    def shape(self) -> ViTShape:
        heads = max(1, int(round(self.heads * self.width)))
        return ViTShape(
            heads,
            self.head_dim,
            int(round(self.mlp_ratio * heads * self.head_dim)),
            self.depth,
        )

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        return_features: bool = False,
        return_attention: bool = False,
    ):
        """Maps ``x: f32[B, H, W, Ch]`` to logits f32[B, num_classes] (or the class token's
        features f32[B, D]; with ``return_attention`` also every block's attention weights,
        a list of f32[B, H, N, N], token 0 the class token). ``train`` changes nothing (no
        dropout, no BatchNorm)."""
        del train
        shape = self.shape
        x = Embed(shape.dim, self.patch, self.dtype, name="embed")(x)
        attention = []
        for b in range(1, shape.depth + 1):
            x, weights = Block(shape, self.gene_dims, self.dtype, name=f"block{b}")(x)
            attention.append(weights)
        features = LayerNorm(self.gene_dims, name="norm")(x)[:, 0].astype(jnp.float32)
        if return_attention:
            return features, attention
        if return_features and not self.is_initializing():
            return features
        return nn.Dense(self.num_classes, name="head")(features)
