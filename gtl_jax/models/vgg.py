"""VGG with BatchNorm, adapted to small images.

Configurations A (VGG11), B (VGG13) and D (VGG16). Max-pooling after a stage is skipped once the
map is 2x2 or smaller, so 28x28 and 32x32 inputs work; global average pooling and one linear head.
Layers are named ``stage{s}/conv{i}`` (each a ConvBN: ``conv/kernel``, ``bn/{scale,bias}``) and
``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.models.graph import ConvNode
from gtl_jax.models.layers import ConvBN, check_forms, max_pool_2x2, scaled

# Widths of the convs of each stage; a max-pool follows every stage.
VGG_STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


class VGGStage(nn.Module):
    widths: Sequence[int]
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, width in enumerate(self.widths, start=1):
            x = ConvBN(
                width,
                small_map_pixels=self.small_map_pixels,
                dtype=self.dtype,
                forms=self.forms,
                name=f"conv{i}",
            )(x, train=train)
            x = nn.relu(x)
        return x


class VGG(nn.Module):
    """VGG-{11,13,16} with BatchNorm for one network.

    Attributes:
      num_classes: width of the linear head.
      depth: 11, 13 or 16.
      width: multiplier of every conv width (0.25 gives 16-32-64-...).
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
    depth: int = 11
    width: float = 1.0
    small_map_pixels: int | None = None
    dtype: jnp.dtype = jnp.float32
    forms: str = "auto"

    def __post_init__(self):
        check_forms(self.forms)
        super().__post_init__()

    def stage_widths(self) -> tuple[tuple[int, ...], ...]:
        if self.depth not in VGG_STAGES:
            raise ValueError(
                f"VGG depth must be one of {sorted(VGG_STAGES)}, got {self.depth}"
            )
        return tuple(
            tuple(scaled(c, self.width) for c in s) for s in VGG_STAGES[self.depth]
        )

    def conv_graph(self) -> tuple[ConvNode, ...]:
        nodes, previous = [], None
        for s, widths in enumerate(self.stage_widths(), start=1):
            for i, c in enumerate(widths, start=1):
                nodes.append(ConvNode(f"stage{s}/conv{i}", c, previous, s))
                previous = nodes[-1].name
        return tuple(nodes)

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_features: bool = False
    ) -> jax.Array:
        """Maps ``x: f32[B, H, W, Ch]`` to logits f32[B, num_classes] (or features f32[B, D])."""
        for s, widths in enumerate(self.stage_widths(), start=1):
            x = VGGStage(
                widths,
                self.small_map_pixels,
                self.dtype,
                forms=self.forms,
                name=f"stage{s}",
            )(x, train=train)
            if x.shape[1] > 2 and x.shape[2] > 2:
                x = max_pool_2x2(x, self.forms)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_features and not self.is_initializing():
            return features
        return nn.Dense(self.num_classes, name="head")(features)
