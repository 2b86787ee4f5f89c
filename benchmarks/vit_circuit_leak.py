"""How far a ViT learngene's circuit is from closed, block by block (the README's figures).

Figure: the relative L2 difference of a learngene's dims in its hosts' residual stream from
its own sub-network's, after each of the 6 blocks. Against: the learngene's own sub-network.
Bound: 0 in every block with the learngene's dims normalised apart (``model.closed_norm``, the
default); with LayerNorm over all dims it is the leak the README quotes (23-47%). Not a timing.
Command: ``python benchmarks/vit_circuit_leak.py`` (seconds on a CPU). Last measured
(2026-12-06, jax 0.10.2): 0 in every block with the dims apart; 0.23-0.47 over all dims
(hosts of seeds 2 and 3), 1.4-2.1 without zeroed cross weights.

One learngene of ``vit_fs`` (r = 0.45: 4 of 8 heads, 64 of 128 dims) inserted into fresh hosts
(seeds 2 and 3) and into its own sub-network (a ViT of exactly the learngene's heads, dims and
MLP units): the relative L2 difference of the gene dims of the residual stream after each
block, on 16 Omniglot test images. With LayerNorm over all dims (``gene_dims=0``) the host
leaks into the circuit; with the learngene's dims normalised apart (``gene_dims=k_dim``, the
default ``model.closed_norm``) the difference is 0. Without zeroed cross weights it is far
larger either way.

  python benchmarks/vit_circuit_leak.py        # seconds on a CPU
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax.data import load_dataset
from gtl_jax.learngene import extract_learngene, insert_learngene, make_spec
from gtl_jax.models import build_model
from gtl_jax.models.vit import ViT


def main() -> None:
    images = load_dataset("omniglot")["test"].images[:16, 0]
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    ancestor = build_model("vit_fs", 5)
    spec = make_spec(ancestor, 0.45, 1)
    variables = ancestor.init(jax.random.key(0), x[:1], train=False)
    gene = extract_learngene(spec, variables["params"], {})
    own = ViT(
        5,
        heads=spec.k_heads,
        head_dim=spec.head_dim,
        mlp_ratio=spec.k_mlp / spec.k_dim,
        depth=spec.depth,
        patch=spec.patch,
    )

    def stream(model, key, zero_cross=True):
        fresh = model.init(key, x[:1], train=False)["params"]
        params, _ = insert_learngene(gene, fresh, {}, zero_cross=zero_cross)
        _, state = model.apply(
            {"params": params},
            x,
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        blocks = state["intermediates"]
        return [
            blocks[f"block{b}"]["__call__"][0][0][..., : spec.k_dim]
            for b in range(1, spec.depth + 1)
        ]

    def leak(out, ref):
        return np.round(
            [
                float(jnp.linalg.norm(o - r) / jnp.linalg.norm(r))
                for o, r in zip(out, ref)
            ],
            4,
        )

    print(f"{spec}; relative difference of the gene dims after blocks 1-{spec.depth}")
    for gene_dims in (0, spec.k_dim):
        reference = stream(own.clone(gene_dims=gene_dims), jax.random.key(1))
        host = ancestor.clone(gene_dims=gene_dims)
        for seed in (2, 3):
            closed = leak(stream(host, jax.random.key(seed)), reference)
            open_ = leak(
                stream(host, jax.random.key(seed), zero_cross=False), reference
            )
            print(f"gene_dims={gene_dims:3d} host seed {seed}: {closed}")
            print(f"{'':13s}without zeroed cross weights: {open_}")


if __name__ == "__main__":
    main()
