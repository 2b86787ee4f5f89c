"""Model registry: one network each; the population axis is added by ``gtl_jax.population``."""

from __future__ import annotations

import functools

from flax import linen as nn

from gtl_jax.models.graph import ConvNode
from gtl_jax.models.resnet12 import ResNet12
from gtl_jax.models.vgg import VGG

MODELS = {
    "vgg11": functools.partial(VGG, depth=11),
    "vgg13": functools.partial(VGG, depth=13),
    "vgg16": functools.partial(VGG, depth=16),
    "resnet12": ResNet12,
}


def build_model(name: str, num_classes: int, *, width: float = 1.0) -> nn.Module:
    """Builds a registered model, e.g. ``build_model("vgg11", 5, width=0.25)``."""
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name](num_classes=num_classes, width=width)


__all__ = ["MODELS", "VGG", "ConvNode", "ResNet12", "build_model"]
