"""3x3 'SAME' conv on small feature maps, forward + backward, in the three forms of a CPU conv.

Run it alone (about 3 minutes for the command below; the committed results ran on one core,
as a worker process of ``python -m gtl_jax.evolve`` runs):

    taskset -c 0 python benchmarks/cpu/conv_small_maps.py --channels 64 128 256 512 --batch 64 \\
        --out benchmarks/cpu/results/conv_small_maps_b64.jsonl

For each map size and channel count C (a C -> C conv), the steady-state time of the conv's
output and both its gradients for a random output gradient (``jax.vjp``; an output gradient that
is an elementwise function of the output, like the gradient of a sum of squares, let XLA fuse
the output's computation into the backward matmuls of the shifted form: up to 2x slower
there, unlike in a network, where BatchNorm's reductions come between), through

- ``lax_conv``: ``lax.conv_general_dilated`` and its own gradients;
- ``library_large``: ``gtl_jax.models.layers.conv_matmul_kernel_grad``, lax.conv with its kernel
  gradient as shifted matmuls: the library's form on larger maps;
- ``shifted_matmul``: ``gtl_jax.models.layers.shifted_matmul_conv``, one matmul per tap on its
  valid region: the library's form on small maps (``Conv``'s rule, ``uses_shifted_matmuls``).

Times: median over ``--rounds`` interleaved rounds of about ``--timing-s`` each (ms per call;
``cpu_explore.interleaved``).
One JSON line per (map, channels), printed and (``--out``) written.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics

from gtl_jax.experiment import configure_jax

configure_jax()  # the command line's XLA flags, as a worker process runs

import jax  # noqa: E402
from cpu_explore import interleaved  # noqa: E402 (this script's directory)

from gtl_jax.models.layers import (  # noqa: E402
    conv_matmul_kernel_grad,
    lax_conv,
    shifted_matmul_conv,
    uses_shifted_matmuls,
)

FORMS = {
    "lax_conv": lax_conv,
    "library_large": conv_matmul_kernel_grad,
    "shifted_matmul": shifted_matmul_conv,
}


def forward_backward(conv, x, kernel, cotangent):
    """The conv's output and its input and kernel gradients for a given output gradient."""
    out, vjp = jax.vjp(conv, x, kernel)
    return out, vjp(cotangent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, nargs="+", default=[64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4, 5, 8])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--timing-s", type=float, default=0.5, help="seconds per timing"
    )
    parser.add_argument("--out", type=pathlib.Path, help="also write the lines here")
    args = parser.parse_args()
    lines = []
    for channels in args.channels:
        for size in args.sizes:
            kx, kk, kc = jax.random.split(jax.random.key(size), 3)
            x = jax.random.normal(kx, (args.batch, size, size, channels))
            kernel = 0.05 * jax.random.normal(kk, (3, 3, channels, channels))
            cotangent = jax.random.normal(kc, (args.batch, size, size, channels))
            grads = {
                name: jax.jit(functools.partial(forward_backward, f))
                for name, f in FORMS.items()
            }
            times = interleaved(
                {
                    name: functools.partial(grad, x, kernel, cotangent)
                    for name, grad in grads.items()
                },
                args.rounds,
                args.timing_s,
            )
            ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
            line = {
                "benchmark": "conv_small_maps",
                "map": f"{size}x{size}",
                "channels": channels,
                "batch": args.batch,
                **{f"{name}_ms": round(v, 3) for name, v in ms.items()},
                "shifted_vs_library_large": round(
                    ms["library_large"] / ms["shifted_matmul"], 3
                ),
                "faster": min(ms, key=ms.get),
                "library_uses_shifted": uses_shifted_matmuls(size, size, channels),
                "backend": jax.default_backend(),
                "jax": jax.__version__,
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.out:
        args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main()
