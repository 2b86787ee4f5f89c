"""Model registry: one network each; the population axis is added by ``gtl_jax.population``."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.models.graph import ConvNode
from gtl_jax.models.layers import FORMS, check_forms
from gtl_jax.models.resnet12 import ResNet12
from gtl_jax.models.vgg import VGG

MODELS = {
    "vgg11": functools.partial(VGG, depth=11),
    "vgg13": functools.partial(VGG, depth=13),
    "vgg16": functools.partial(VGG, depth=16),
    "resnet12": ResNet12,
}


PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    dtype: jnp.dtype = jnp.float32,
    forms: str = "auto",
) -> nn.Module:
    """Builds a registered model, e.g. ``build_model("vgg11", 5, width=0.25)``.

    ``dtype`` is the computation dtype: ``jnp.bfloat16`` (``PRECISIONS["bfloat16"]``) is mixed
    precision for GPU/TPU (bfloat16 convs and activations, float32 parameters, BatchNorm
    statistics, head, logits and loss). On this CPU bfloat16 is no faster than float32
    (benchmarks/cpu/results/cpu_explore.md).

    ``forms`` is how the layers compute (``gtl_jax.models.layers``): ``"cpu"`` the forms fast
    on XLA CPU, ``"xla"`` lax.conv and nn.max_pool (what GPU/TPU run), ``"auto"`` the default
    backend's (``"cpu"`` on CPU). The same parameters in every form, and the same outputs and
    gradients to float rounding.
    """
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    check_forms(forms)
    return MODELS[name](num_classes=num_classes, width=width, dtype=dtype, forms=forms)


__all__ = [
    "FORMS",
    "MODELS",
    "PRECISIONS",
    "VGG",
    "ConvNode",
    "ResNet12",
    "build_model",
]
