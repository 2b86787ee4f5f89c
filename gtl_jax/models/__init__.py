"""Model registry: one network each; the population axis is added by ``gtl_jax.population``."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.models.graph import ConvNode
from gtl_jax.models.layers import FORMS, check_forms
from gtl_jax.models.resnet12 import ResNet12
from gtl_jax.models.vgg import VGG
from gtl_jax.models.vit import ViT

MODELS = {
    "vgg11": functools.partial(VGG, depth=11),
    "vgg13": functools.partial(VGG, depth=13),
    "vgg16": functools.partial(VGG, depth=16),
    "resnet12": ResNet12,
    # ViT-Tiny and ViT-Small (224x224 images, 16-pixel patches), and a ViT sized for
    # few-shot images (28-84 pixels; 4-pixel patches: 7x7 tokens at 28x28).
    "vit_tiny": functools.partial(
        ViT, heads=3, head_dim=64, mlp_ratio=4.0, depth=12, patch=16
    ),
    "vit_small": functools.partial(
        ViT, heads=6, head_dim=64, mlp_ratio=4.0, depth=12, patch=16
    ),
    "vit_fs": functools.partial(
        ViT, heads=8, head_dim=16, mlp_ratio=2.0, depth=6, patch=4
    ),
}
VITS = ("vit_tiny", "vit_small", "vit_fs")


PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    dtype: jnp.dtype = jnp.float32,
    forms: str = "auto",
    patch: int = 0,
) -> nn.Module:
    """Builds a registered model, e.g. ``build_model("vgg11", 5, width=0.25)``.

    ``dtype`` is the computation dtype: ``jnp.bfloat16`` (``PRECISIONS["bfloat16"]``) is mixed
    precision for GPU/TPU (bfloat16 convs and activations, float32 parameters, BatchNorm
    statistics, head, logits and loss). On this CPU bfloat16 is no faster than float32
    (docs/cpu/forms_and_flags.md).

    ``forms`` is how the layers compute (``gtl_jax.models.layers``): ``"cpu"`` the forms fast
    on XLA CPU, ``"xla"`` lax.conv and nn.max_pool (what GPU/TPU run), ``"auto"`` the default
    backend's (``"cpu"`` on CPU). The same parameters in every form, and the same outputs and
    gradients to float rounding.

    ``patch`` (ViTs only; 0: the model's own) is the side of a ViT's patches in pixels.
    """
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    check_forms(forms)
    extra = {}
    if patch:
        if name not in VITS:
            raise ValueError(
                f"patch={patch}: only ViTs ({', '.join(VITS)}) have patches"
            )
        extra["patch"] = int(patch)
    return MODELS[name](
        num_classes=num_classes, width=width, dtype=dtype, forms=forms, **extra
    )


__all__ = [
    "FORMS",
    "MODELS",
    "PRECISIONS",
    "VGG",
    "VITS",
    "ViT",
    "ConvNode",
    "ResNet12",
    "build_model",
]
