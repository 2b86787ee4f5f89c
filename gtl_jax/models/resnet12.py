"""ResNet12, the few-shot standard backbone.

Four residual stages of widths 64-160-320-640. Each stage: three 3x3 convs without bias, each
followed by BatchNorm, LeakyReLU(0.1) after the first two and after the residual add; a 1x1
conv + BatchNorm shortcut; 2x2 max-pool. Global average pooling and a linear head. Layers are named
``stage{s}/conv{1,2,3}`` and ``stage{s}/shortcut`` (each a ConvBN) and ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.models.graph import ConvNode
from gtl_jax.models.layers import ConvBN, check_forms, max_pool_2x2, scaled

RESNET12_WIDTHS = (64, 160, 320, 640)


def leaky_relu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, negative_slope=0.1)


class ResidualStage(nn.Module):
    width: int
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        shortcut = ConvBN(
            self.width, 1, dtype=self.dtype, forms=self.forms, name="shortcut"
        )(x, train=train)
        for i in (1, 2, 3):
            x = ConvBN(
                self.width,
                small_map_pixels=self.small_map_pixels,
                dtype=self.dtype,
                forms=self.forms,
                name=f"conv{i}",
            )(x, train=train)
            if i < 3:
                x = leaky_relu(x)
        x = leaky_relu(x + shortcut)
        if x.shape[1] > 1 and x.shape[2] > 1:
            x = max_pool_2x2(x, self.forms)
        return x


class ResNet12(nn.Module):
    """ResNet12 for one network.

    Attributes:
      num_classes: width of the linear head.
      widths: the four stage widths before the multiplier.
      width: multiplier of every width (1/8 gives 8-20-40-80).
      dtype: computation dtype of the convs and BatchNorm outputs (``jnp.bfloat16`` for mixed
        precision on GPU/TPU). Parameters and running statistics stay float32; the pooled
        features, the head and the logits are float32.
      forms: ``"cpu"`` (the layers' forms fast on XLA CPU), ``"xla"`` (lax.conv and
        nn.max_pool, as on GPU/TPU) or ``"auto"`` (``"cpu"`` on the CPU backend, ``"xla"``
        otherwise); see ``gtl_jax.models.layers``. Same parameters and, to float rounding,
        the same outputs and gradients in every form.
      small_map_pixels: the CPU forms' shifted matmuls on exactly the maps of at most this many
        pixels (``layers.uses_shifted_matmuls``); None: the measured rule.
    """

    num_classes: int
    widths: Sequence[int] = RESNET12_WIDTHS
    width: float = 1.0
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    def __post_init__(self):
        check_forms(self.forms)
        super().__post_init__()

    def stage_widths(self) -> tuple[int, ...]:
        return tuple(scaled(c, self.width) for c in self.widths)

    def conv_graph(self) -> tuple[ConvNode, ...]:
        nodes, previous = [], None
        for s, c in enumerate(self.stage_widths(), start=1):
            # The stage's output is the sum of conv3 and the shortcut, so either names it.
            nodes.append(ConvNode(f"stage{s}/shortcut", c, previous, s))
            nodes.append(ConvNode(f"stage{s}/conv1", c, previous, s))
            nodes.append(ConvNode(f"stage{s}/conv2", c, f"stage{s}/conv1", s))
            nodes.append(ConvNode(f"stage{s}/conv3", c, f"stage{s}/conv2", s))
            previous = f"stage{s}/conv3"
        return tuple(nodes)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_features: bool = False
    ) -> jax.Array:
        """Maps ``x: f32[B, H, W, Ch]`` to logits f32[B, num_classes] (or features f32[B, D])."""
        for s, c in enumerate(self.stage_widths(), start=1):
            x = ResidualStage(
                c, self.small_map_pixels, self.dtype, forms=self.forms, name=f"stage{s}"
            )(x, train=train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_features and not self.is_initializing():
            return features
        return nn.Dense(self.num_classes, name="head")(features)
