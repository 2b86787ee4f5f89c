"""3x3 'SAME' conv on small feature maps: lax.conv vs shifted matmuls, forward + backward.

Run: python benchmarks/conv_small_maps.py [--channels 64] [--batch 32]
Prints one JSON line per map size with both forms' steady-state time (ms). XLA CPU lowers a conv
on a 2x2 or 1x1 map badly (../shared/MEASURED.md); this picks the map size below which
``gtl_jax.models.layers.Conv`` switches to shifted matmuls (SMALL_MAP_PIXELS). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from gtl_jax.models.layers import shifted_matmul_conv


def lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def time_grad(conv, x, kernel, repeats):
    loss = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
    jax.block_until_ready(loss(x, kernel))
    start = time.perf_counter()
    for _ in range(repeats):
        out = loss(x, kernel)
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    for size in (1, 2, 3, 4, 5, 7, 14):
        kx, kk = jax.random.split(jax.random.key(size))
        x = jax.random.normal(kx, (args.batch, size, size, args.channels))
        kernel = jax.random.normal(kk, (3, 3, args.channels, args.channels))
        conv_ms = time_grad(lax_conv, x, kernel, args.repeats)
        matmul_ms = time_grad(shifted_matmul_conv, x, kernel, args.repeats)
        print(
            json.dumps(
                {
                    "benchmark": "conv_small_maps",
                    "map": f"{size}x{size}",
                    "channels": args.channels,
                    "batch": args.batch,
                    "lax_conv_ms": round(conv_ms, 3),
                    "shifted_matmul_ms": round(matmul_ms, 3),
                    "faster": "shifted_matmul" if matmul_ms < conv_ms else "lax_conv",
                    "backend": jax.default_backend(),
                    "jax": jax.__version__,
                }
            )
        )


if __name__ == "__main__":
    main()
