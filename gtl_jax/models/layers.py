"""Building blocks shared by the models: a conv and a 2x2 max-pool in two forms, conv+BN.

Mixed precision: ``dtype`` is the computation dtype (e.g. ``jnp.bfloat16`` on GPU/TPU);
parameters are always created in ``param_dtype`` (float32, the master copy the optimiser
updates) and cast to ``dtype`` where they are used. BatchNorm computes its batch statistics and
normalisation in float32 whatever ``dtype`` is (flax promotes them), and keeps its running
statistics in float32.

Forms. Every layer here, and the models built from them, take ``forms``, one of ``FORMS``:

- ``"xla"``: XLA's own operations, lax.conv and nn.max_pool (a 1x1 conv is a matmul in every
  form). What GPU/TPU users get; the CPU forms were never measured there.
- ``"cpu"``: the forms fast on XLA CPU, where XLA lowers some convolutions and pooling
  gradients badly:

  - a 3x3 conv on a 2x2 or 1x1 map, which XLA CPU runs about 80x below its matmul speed
    (docs/cpu.md), and on a 3x3 or 4x4 map with at least 256 input channels, is a sum of
    shifted matmuls over each tap's valid region (``shifted_matmul_conv``;
    ``uses_shifted_matmuls``);
  - a conv on a larger map is lax.conv with its kernel gradient as shifted matmuls
    (``conv_matmul_kernel_grad``): XLA CPU ran lax.conv's kernel gradient several times
    slower than its forward;
  - 2x2 max-pooling is a reshaped max (``reshaped_max_pool_2x2``): XLA CPU turns
    nn.max_pool's gradient (select-and-scatter) into a scatter indexed by four int32 arrays of
    the input's size.

- ``"auto"`` (the default): ``"cpu"`` when JAX's default backend is the CPU, ``"xla"``
  otherwise, decided when the model is traced.

The last two CPU forms together made a VGG11 train step (32x32, batch 64) 1.16-1.28x faster at
width 1/4 and 1.23-1.28x at width 1 in four runs (docs/cpu/forms_and_flags.md).
Values agree between the forms to float rounding, gradients too (the pool's differ only at
ties, see ``max_pool_2x2``), so ``forms="xla"`` on a CPU computes, at float rounding, the
network without the CPU forms (tests/test_models.py). Every form keeps the parameter layout of ``flax.linen.Conv``
(``kernel: f32[kh, kw, I, O]``, HWIO), so learngene slicing does not care which form ran.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

FORMS = ("auto", "cpu", "xla")


def check_forms(forms: str) -> str:
    """``forms`` if it is one of ``FORMS``; otherwise a one-line ValueError naming it."""
    if forms not in FORMS:
        raise ValueError(
            f"forms={forms!r}: must be one of {', '.join(map(repr, FORMS))}"
        )
    return forms


def resolve_forms(forms: str) -> str:
    """``"cpu"`` or ``"xla"``: ``forms`` itself, or for ``"auto"`` the default backend's."""
    if check_forms(forms) == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return forms


# In the CPU forms, 3x3 convs on maps of at most SMALL_MAP_PIXELS pixels (2x2 and 1x1), and on
# maps of at most WIDE_MAP_PIXELS (3x3, 4x4) with at least WIDE_MAP_CHANNELS input channels, use
# the shifted-matmul form. docs/cpu/small_maps.md (forward + both gradients, batch
# 64, one core), against the library's form on larger
# maps: 2x2 and 1x1 maps 2.8-93x faster at 64-512 channels; 3x3 and 4x4 maps 1.31-1.95x at 256
# and 512 channels, 1.11-1.67x at 128, 0.87-1.31x at 64; 5x5 maps 0.83-1.17x; 8x8 maps
# 0.67-1.03x. Whole VGG11 step (32x32, batch 64, one core; docs/cpu/step_profile.md),
# against only 2x2 and 1x1 maps as shifted matmuls over the zero-padded window: 1.15x at width
# 1 (rounds 1.11-1.34), 1.03x at width 1/4 (1.00-1.15). The default command's networks (width
# 1/8, 28x28: 3x3 maps of at most 64 channels, a 1x1 map) compute the same numbers bit for bit.
# 3x3 maps of 64 and 128 channels were faster as shifted matmuls too (1.31x, 1.67x); they
# stay with lax.conv so that the default command's published numbers stay as they are.
SMALL_MAP_PIXELS = 4
WIDE_MAP_PIXELS = 16
WIDE_MAP_CHANNELS = 256


def uses_shifted_matmuls(
    h: int, w: int, channels: int, small_map_pixels: int | None = None
) -> bool:
    """Whether ``Conv``'s CPU forms compute a 3x3 conv of an ``h x w`` map with ``channels``
    input channels as shifted matmuls (``shifted_matmul_conv``) rather than lax.conv.

    ``small_map_pixels`` (``Conv``'s override) set: exactly the maps of at most that many
    pixels. Unset: the rule above. The ``"xla"`` forms never use shifted matmuls.
    """
    if small_map_pixels is not None:
        return h * w <= small_map_pixels
    return h * w <= SMALL_MAP_PIXELS or (
        h * w <= WIDE_MAP_PIXELS and channels >= WIDE_MAP_CHANNELS
    )


# In the CPU forms, larger maps use lax.conv with its kernel gradient computed as shifted
# matmuls (conv_matmul_kernel_grad). docs/cpu/forms_and_flags.md, forward + backward of one
# conv at batch 64: 1.2-1.9x faster than lax.conv on VGG11's 32x32, 16x16 and 8x8 layers,
# about even on 4x4; in the whole VGG11 step it was worth 1.13x at width 1 and nothing
# measurable at width 1/4. Its gradients differ from lax.conv's by float rounding.


def shifted_matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 'SAME' convolution as a sum of one matmul per kernel tap, on its valid region.

    Tap (i, j) reads the input shifted by (i - kh // 2, j - kw // 2); each tap's matmul runs only
    over the output pixels whose shifted input lies inside the map, and its product is padded
    back to the output's size: no multiplication by the zero padding (on a 2x2 map, 16 of the
    36 pixel-taps are real work; on a 1x1 map only the centre tap remains).

    Args:
      x: f32[B, H, W, I].
      kernel: f32[kh, kw, I, O] (odd kh, kw).

    Returns:
      f32[B, H, W, O], equal to ``lax.conv_general_dilated(..., padding='SAME')``.
    """
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    out = None
    for i in range(kh):
        # Output row r reads input row r + di: rows r0..r1-1 read rows inside the map.
        di = i - kh // 2
        r0, r1 = max(0, -di), min(h, h - di)
        if r0 >= r1:
            continue
        for j in range(kw):
            dj = j - kw // 2
            c0, c1 = max(0, -dj), min(w, w - dj)
            if c0 >= c1:
                continue
            term = jnp.einsum(
                "bhwi,io->bhwo",
                x[:, r0 + di : r1 + di, c0 + dj : c1 + dj],
                kernel[i, j],
            )
            term = jnp.pad(term, ((0, 0), (r0, h - r1), (c0, w - c1), (0, 0)))
            out = term if out is None else out + term
    return out


def lax_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_general_dilated``, stride 1, 'SAME', NHWC/HWIO."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def shifted_matmul_kernel_grad(
    x: jax.Array, cotangent: jax.Array, kernel_shape: tuple[int, ...]
) -> jax.Array:
    """The kernel gradient of a stride-1 'SAME' conv as one matmul per kernel tap.

    Args:
      x: f32[B, H, W, I], the conv's input.
      cotangent: f32[B, H, W, O], the gradient of its output.
      kernel_shape: (kh, kw, I, O), odd kh, kw.

    Returns:
      f32[kh, kw, I, O]: tap (i, j) is ``window(i, j)^T @ cotangent`` with both flattened to
      [B*H*W, .], where window(i, j) is the input shifted by the tap (zero padded).
    """
    kh, kw = kernel_shape[:2]
    b, h, w, c = x.shape
    ph, pw = kh // 2, kw // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    flat = cotangent.reshape(b * h * w, cotangent.shape[-1])

    def tap(i, j):
        window = xp[:, i : i + h, j : j + w].reshape(b * h * w, c)
        return jnp.einsum("ni,no->io", window, flat)

    return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])


@jax.custom_vjp
def conv_matmul_kernel_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax_conv`` whose kernel gradient is computed by ``shifted_matmul_kernel_grad``.

    Forward and input gradient are lax.conv's (XLA CPU runs both near its matmul speed); only
    the kernel gradient, which XLA CPU runs several times slower than the forward conv of the
    same size, is replaced. Same values as ``lax_conv`` and its gradients up to float rounding.
    """
    return lax_conv(x, kernel)


def _conv_fwd(x, kernel):
    return lax_conv(x, kernel), (x, kernel)


def _conv_bwd(residuals, cotangent):
    x, kernel = residuals
    dx = jax.vjp(lambda x: lax_conv(x, kernel), x)[1](cotangent)[0]
    dk = shifted_matmul_kernel_grad(x, cotangent, kernel.shape)
    return dx, dk.astype(kernel.dtype)


conv_matmul_kernel_grad.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
    """Stride-1 'SAME' conv with ``flax.linen.Conv``'s parameters, in the form ``forms`` picks.

    Attributes:
      forms: ``"cpu"``, ``"xla"`` or ``"auto"`` (see the module docstring).
      small_map_pixels: the CPU forms' shifted matmuls on exactly the maps of at most this many
        pixels; None: ``uses_shifted_matmuls``' rule. Ignored by the ``"xla"`` forms.
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = False
    small_map_pixels: int | None = None
    dtype: jnp.dtype | None = None  # computation dtype; None: the input's
    param_dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    def __post_init__(self):
        check_forms(self.forms)
        super().__post_init__()

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
        cpu = resolve_forms(self.forms) == "cpu"
        if k == 1:
            y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
        elif cpu and uses_shifted_matmuls(*x.shape[1:], self.small_map_pixels):
            y = shifted_matmul_conv(x, kernel)
        elif cpu:
            y = conv_matmul_kernel_grad(x, kernel)
        else:
            y = lax_conv(x, kernel)
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros, (self.features,), self.param_dtype
            )
            y = y + bias.astype(dtype)
        return y


# In the CPU forms, 2x2 max-pooling is computed as a reshape and a max over the two window axes.
# XLA CPU expands the gradient of nn.max_pool (lax.reduce_window, whose transpose is
# select-and-scatter) into a scatter driven by four int32 index arrays of the input's size; the
# reshaped max's gradient is an elementwise mask. docs/cpu/forms_and_flags.md, forward +
# backward of VGG11's pools at batch 64: 1.7-6x faster; in the whole step 1.14x at width 1/4,
# within noise at 1. Gradients differ from nn.max_pool's only at ties (see max_pool_2x2).


def reshaped_max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 'VALID' max-pooling as a reshape and a max (the CPU form)."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def xla_max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 'VALID' max-pooling as ``nn.max_pool`` (the XLA form)."""
    return nn.max_pool(x, (2, 2), (2, 2))


def max_pool_2x2(x: jax.Array, forms: str = "auto") -> jax.Array:
    """2x2 stride-2 'VALID' max-pooling: ``x: f32[B, H, W, C]`` -> f32[B, H // 2, W // 2, C].

    ``forms``: ``"cpu"`` is ``reshaped_max_pool_2x2``, ``"xla"`` is ``nn.max_pool(x, (2, 2),
    (2, 2))``; ``"auto"`` is the default backend's. Same values in both (an odd last row or
    column is dropped). Gradients differ only at ties within a window: the reshaped form splits
    the gradient among the tied maxima, nn.max_pool gives it to one. After a ReLU the ties are
    zeros, whose gradient the ReLU discards, so a ReLU network's gradients are the same.
    """
    if resolve_forms(forms) == "cpu":
        return reshaped_max_pool_2x2(x)
    return xla_max_pool_2x2(x)


class ConvBN(nn.Module):
    """Conv (no bias) followed by BatchNorm; params ``{conv: {kernel}, bn: {scale, bias}}``.

    BatchNorm has no ``axis_name``: statistics are per individual. Momentum 0.9 lets the
    running statistics of a network fine-tuned for a few dozen steps reflect its data.
    ``dtype`` is the computation dtype of the conv and of BatchNorm's output (its statistics
    stay float32). ``forms``: the conv's (``Conv``).
    """

    features: int
    kernel_size: int = 3
    bn_momentum: float = 0.9
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    def __post_init__(self):
        check_forms(self.forms)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            self.kernel_size,
            small_map_pixels=self.small_map_pixels,
            dtype=self.dtype,
            forms=self.forms,
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
