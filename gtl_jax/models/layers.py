"""Building blocks shared by the models: a 3x3/1x1 conv that is fast on small maps, conv+BN.

Mixed precision: ``dtype`` is the computation dtype (e.g. ``jnp.bfloat16`` on GPU/TPU);
parameters are always created in ``param_dtype`` (float32, the master copy the optimiser
updates) and cast to ``dtype`` where they are used. BatchNorm computes its batch statistics and
normalisation in float32 whatever ``dtype`` is (flax promotes them), and keeps its running
statistics in float32.

XLA's CPU backend runs a 3x3 convolution on a 2x2 or 1x1 feature map about 80x below its matmul
speed (`../shared/MEASURED.md`). ``Conv`` therefore computes such layers as a sum of shifted matmuls,
which is exact and keeps the parameter layout of ``flax.linen.Conv`` (``kernel: f32[kh, kw, I, O]``,
HWIO), so learngene slicing does not care which form ran.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

# On CPU, feature maps of at most this many pixels (2x2 and 1x1) use the shifted-matmul form.
# benchmarks/conv_small_maps.py (forward + backward, batch 32): on a 2x2 map it was 3.4x faster
# than lax.conv at 64 channels and 12x at 256; on 3x3 and 4x4 maps the winner depends on the
# width (lax.conv at 64 channels, shifted matmuls at 256), so those stay with lax.conv.
SMALL_MAP_PIXELS = 4


def default_small_map_pixels() -> int:
    """SMALL_MAP_PIXELS on CPU; 0 (always lax.conv) on GPU/TPU, where it was not measured."""
    return SMALL_MAP_PIXELS if jax.default_backend() == "cpu" else 0


def shifted_matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 'SAME' convolution as a sum of one matmul per kernel tap.

    Args:
      x: f32[B, H, W, I].
      kernel: f32[kh, kw, I, O] (odd kh, kw).

    Returns:
      f32[B, H, W, O], equal to ``lax.conv_general_dilated(..., padding='SAME')``.
    """
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = None
    for i in range(kh):
        # Taps whose window lies entirely in the zero padding contribute nothing: skip them
        # (on a 1x1 map only the centre tap remains).
        if i + h <= ph or i >= ph + h:
            continue
        for j in range(kw):
            if j + w <= pw or j >= pw + w:
                continue
            term = jnp.einsum(
                "bhwi,io->bhwo", xp[:, i : i + h, j : j + w], kernel[i, j]
            )
            out = term if out is None else out + term
    return out


class Conv(nn.Module):
    """Stride-1 'SAME' conv with ``flax.linen.Conv``'s parameters, fast on small maps."""

    features: int
    kernel_size: int = 3
    use_bias: bool = False
    small_map_pixels: int | None = None  # None: default_small_map_pixels()
    dtype: jnp.dtype | None = None  # computation dtype; None: the input's
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
            (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if k == 1:
            y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
        elif x.shape[1] * x.shape[2] <= (
            default_small_map_pixels()
            if self.small_map_pixels is None
            else self.small_map_pixels
        ):
            y = shifted_matmul_conv(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros, (self.features,), self.param_dtype
            )
            y = y + bias.astype(dtype)
        return y


class ConvBN(nn.Module):
    """Conv (no bias) followed by BatchNorm; params ``{conv: {kernel}, bn: {scale, bias}}``.

    BatchNorm has no ``axis_name``: statistics are per individual (STYLE 5). Momentum 0.9 lets the
    running statistics of a network fine-tuned for a few dozen steps reflect its data.
    ``dtype`` is the computation dtype of the conv and of BatchNorm's output (its statistics
    stay float32).
    """

    features: int
    kernel_size: int = 3
    bn_momentum: float = 0.9
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            self.kernel_size,
            small_map_pixels=self.small_map_pixels,
            dtype=self.dtype,
            name="conv",
        )(x)
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            dtype=self.dtype,
            name="bn",
        )(x)


def scaled(width: int, multiplier: float) -> int:
    """A layer width times a multiplier, at least 1."""
    return max(1, int(round(width * multiplier)))
