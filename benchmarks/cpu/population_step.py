"""Population train step per execution strategy, and what compiling it costs.

Run: python benchmarks/cpu/population_step.py [--pop 8] [--batch 32] [--width 0.125]
Prints JSON lines:
- ``strategy``: images/s in steady state and first-call (compile) seconds of one SGD step of P
  VGG11 networks on 28x28 images, for the library's ``loop`` and ``vmap`` strategies and for
  ``unroll`` (the P members traced one after another inside one jit; not a library strategy).
- ``init_compile``: seconds to compile one network's init with JAX's partitionable threefry on
  and off (the command line turns it off, see ``gtl_jax.experiment.configure_jax``); each in a fresh
  subprocess so that no cache is shared.
Run it alone: the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax.executors import population_map
from gtl_jax.models import build_model
from gtl_jax.population import init_network, make_optimizer, stack, train_step

INIT_COMPILE = """
import time, jax, jax.numpy as jnp
jax.config.update("jax_threefry_partitionable", {flag})
from gtl_jax.models import build_model
from gtl_jax.population import init_network, make_optimizer
model, tx = build_model("vgg11", 5, width={width}), make_optimizer("adam", 1e-3)
start = time.perf_counter()
jax.jit(lambda k: init_network(model, tx, k, (28, 28, 1))).lower(jax.random.key(0)).compile()
print(time.perf_counter() - start)
"""


def unrolled(fn):
    def run(*args):
        size = jax.tree.leaves(args[0])[0].shape[0]
        outs = [fn(*jax.tree.map(lambda a, i=i: a[i], args)) for i in range(size)]
        return stack(outs)

    return jax.jit(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pop", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    model = build_model("vgg11", 5, width=args.width)
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    keys = jax.random.split(jax.random.key(0), args.pop)
    state = stack([init_network(model, tx, k, (28, 28, 1)) for k in keys])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (args.pop, args.batch, 28, 28, 1), np.uint8))
    y = jnp.asarray(rng.integers(0, 5, (args.pop, args.batch)), jnp.int32)
    step = functools.partial(train_step, model, tx)
    strategies = {
        "loop": population_map(step, (0, 0, 0), strategy="loop"),
        "vmap": population_map(step, (0, 0, 0), strategy="vmap"),
        "unroll": unrolled(step),
    }
    for name, fn in strategies.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(state, x, y))
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = fn(state, x, y)
        jax.block_until_ready(out)
        seconds = (time.perf_counter() - start) / args.repeats
        print(
            json.dumps(
                {
                    "benchmark": "population_step",
                    "strategy": name,
                    "pop": args.pop,
                    "batch": args.batch,
                    "width": args.width,
                    "images_per_s": round(args.pop * args.batch / seconds, 1),
                    "first_call_s": round(first, 2),
                    "backend": jax.default_backend(),
                    "jax": jax.__version__,
                }
            ),
            flush=True,
        )
    for flag in (True, False):
        code = INIT_COMPILE.format(flag=flag, width=args.width)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        print(
            json.dumps(
                {
                    "benchmark": "init_compile",
                    "threefry_partitionable": flag,
                    "width": args.width,
                    "compile_s": round(float(out.stdout.split()[-1]), 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
