"""FLOPs per image of a registry model, from XLA's cost analysis (configs/imagenet.py's estimate).

Figure: GFLOP per image, forward and forward + backward, of a registry model (default
ViT-Small at 224x224) as XLA counts them. Against: the numbers configs/imagenet.py's compute
budget is built on (9.27 and 28.3 GFLOP per image; about 4.8 PFLOP per generation). Bound:
equal to those to the printed digits; when the model changes them, the budget in
configs/imagenet.py and the README is recomputed. Command: ``python benchmarks/model_flops.py``
(seconds on a CPU). Last measured: 21.7M parameters, 9.27 and 28.27 GFLOP per image
(2026-12-06, a 2-core x86-64 CPU, jax 0.10.2).

The forward pass of one image, and the forward and backward pass (the gradient of the
parameters) per image of a batch of 8, as XLA counts them in the compiled programs
(``jax.jit(f).lower(...).compile().cost_analysis()``; a multiply-add counts 2). Compiled for
the CPU here: the counts are the program's, not a speed.

  python benchmarks/model_flops.py                          # vit_small at 224 (seconds)
  python benchmarks/model_flops.py resnet12 84              # NAME SIZE [PATCH]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from gtl_jax.models import build_model


def flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def main(name: str = "vit_small", size: int = 224, patch: int = 0) -> None:
    model = build_model(name, 5, patch=patch)
    x = jnp.zeros((1, size, size, 3))
    shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params = sum(p.size for p in jax.tree.leaves(variables))
    forward = flops(lambda v, x: model.apply(v, x, train=False), variables, x)
    batch = jnp.zeros((8, size, size, 3))
    grad = jax.grad(lambda v, x: model.apply(v, x, train=False).sum())
    backward = flops(grad, variables, batch) / 8
    print(
        f"{name} at {size}x{size}: {params / 1e6:.1f}M parameters, "
        f"{forward / 1e9:.2f} GFLOP per image forward, "
        f"{backward / 1e9:.2f} GFLOP per image forward and backward"
    )


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))
