"""The steps of the default command (VGG11 x1/8, 28x28x1, 5-way) on one pinned core, JAX vs torch.

Run it alone: ``python benchmarks/cpu/default_size.py [--core 0] [--out benchmarks/cpu/results]``
(needs torch: ``pip install -e '.[bench]'``). Writes ``default_size.{jsonl,md}``.

Since the default command splits its work between worker processes pinned one per core
(``workers=0``), one core is what each of its steps runs on. Timed, milliseconds per call
(median of ``--repeats`` repeats of ``--calls`` calls, after a warm-up):

- ``lifetime step``: one SGD step (momentum 0.9, lr 0.05, weight decay 5e-4) in train mode,
  batch 32 (``gtl_jax.population.train_step``, jitted; torch: ``torch_vgg.train_step``);
- ``lifetime step, library loop, P=5``: the evolution's lifetime step as a worker runs it for a
  block of 5 members (``population_map(..., strategy="loop")``), per member, without and with
  ``carry`` (the state donated and updated in place);
- ``descendant step, k images``: one Adam step (1e-3) with BatchNorm on its running statistics
  (``gtl_jax.descendants.frozen_bn_step``; torch: eval mode), k = 5 (1-shot) and 25 (5-shot);
- ``query forward, 75 images``: inference logits of the 75 query images of an episode.

Inputs are random u8 images; the values do not change the cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def timed(fn, calls: int, repeats: int, block=lambda x: x) -> float:
    """Median ms per call of ``fn()`` over ``repeats`` repeats of ``calls`` calls."""
    block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        block(out)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def jax_rows(calls: int, repeats: int) -> list[dict]:
    from gtl_jax.experiment import configure_jax

    configure_jax()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gtl_jax.descendants import frozen_bn_step
    from gtl_jax.executors import population_map
    from gtl_jax.models import build_model
    from gtl_jax.population import (
        init_network,
        make_optimizer,
        predict,
        stack,
        train_step,
    )

    rng = np.random.default_rng(0)
    model = build_model("vgg11", 5, width=0.125)
    images = lambda n: jnp.asarray(rng.integers(0, 256, (n, 28, 28, 1), np.uint8))  # noqa: E731
    labels = lambda n: jnp.arange(n) % 5  # noqa: E731
    sgd = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    adam = make_optimizer("adam", 1e-3)
    block = jax.block_until_ready
    rows = []

    life = jax.jit(functools.partial(train_step, model, sgd))
    state = [init_network(model, sgd, jax.random.key(0), (28, 28, 1))]
    x, y = images(32), labels(32)

    def life_call():
        state[0], loss = life(state[0], x, y)
        return loss

    rows.append(
        ("lifetime step, batch 32", "jax", timed(life_call, calls, repeats, block))
    )

    members = 5
    xs, ys = jnp.stack([x] * members), jnp.stack([y] * members)
    for carry in (None, 0):
        fn = population_map(
            functools.partial(train_step, model, sgd),
            (0, 0, 0),
            strategy="loop",
            carry=carry,
        )
        pop = [
            stack(
                [
                    init_network(model, sgd, jax.random.key(i), (28, 28, 1))
                    for i in range(members)
                ]
            )
        ]

        def pop_call(fn=fn, pop=pop):
            pop[0], loss = fn(pop[0], xs, ys)
            return loss

        ms = timed(pop_call, max(1, calls // members), repeats, block) / members
        what = "with carry" if carry is not None else "without carry"
        rows.append(
            (f"lifetime step, library loop, P={members}, per member, {what}", "jax", ms)
        )

    tuned = [init_network(model, adam, jax.random.key(1), (28, 28, 1))]
    descend = jax.jit(functools.partial(frozen_bn_step, model, adam))
    for k in (5, 25):
        xk, yk = images(k), labels(k)

        def descend_call(xk=xk, yk=yk):
            tuned[0], loss = descend(tuned[0], xk, yk)
            return loss

        rows.append(
            (
                f"descendant step, {k} images",
                "jax",
                timed(descend_call, calls, repeats, block),
            )
        )

    forward = jax.jit(lambda s, q: predict(model, s.params, s.batch_stats, q))
    q = images(75)
    rows.append(
        (
            "query forward, 75 images",
            "jax",
            timed(lambda: forward(tuned[0], q), calls, repeats, block),
        )
    )
    return rows


def torch_rows(calls: int, repeats: int) -> list[dict]:
    import torch

    sys.path.insert(0, str(HERE))
    import torch_vgg

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    model = torch_vgg.TorchVGG(5, 11, 0.125, in_channels=1)
    images = lambda n: torch.randint(0, 256, (n, 28, 28, 1), dtype=torch.uint8)  # noqa: E731
    labels = lambda n: torch.arange(n) % 5  # noqa: E731

    sgd = torch_vgg.make_sgd(model, 0.05, weight_decay=5e-4)
    x, y = images(32), labels(32)
    model.train()
    rows.append(
        (
            "lifetime step, batch 32",
            "torch",
            timed(
                lambda: torch_vgg.train_step(model, sgd, x, y, False), calls, repeats
            ),
        )
    )

    adam = torch.optim.Adam(model.parameters(), 1e-3)
    model.eval()  # BatchNorm on its running statistics, as frozen_bn_step

    for k in (5, 25):
        xk, yk = images(k), labels(k)

        def descend_call(xk=xk, yk=yk):
            adam.zero_grad()
            logits = model(torch_vgg.to_input(xk, False))
            loss = torch.nn.functional.cross_entropy(logits, yk)
            loss.backward()
            adam.step()
            return loss

        rows.append(
            (
                f"descendant step, {k} images",
                "torch",
                timed(descend_call, calls, repeats),
            )
        )

    q = images(75)

    def forward():
        with torch.no_grad():
            return model(torch_vgg.to_input(q, False))

    rows.append(("query forward, 75 images", "torch", timed(forward, calls, repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})  # before JAX or torch start their threads
    rows = jax_rows(args.calls, args.repeats)
    try:
        rows += torch_rows(args.calls, args.repeats)
    except ImportError:
        print("torch is not installed: JAX rows only", file=sys.stderr)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, pinned to core {args.core}",
        "command": "python benchmarks/cpu/default_size.py " + " ".join(sys.argv[1:]),
    }
    with (out / "default_size.jsonl").open("w") as f:
        for what, lib, ms in rows:
            f.write(
                json.dumps({"what": what, "lib": lib, "ms": round(ms, 3), **meta})
                + "\n"
            )
    ms = {(what, lib): v for what, lib, v in rows}
    lines = [
        "# The default command's steps on one core (`benchmarks/cpu/default_size.py`)",
        "",
        f"Command: `{meta['command'].strip()}`; {meta['date']}; {meta['machine']}.",
        "VGG11 x1/8, 28x28x1 inputs, 5-way head; ms per call, median of repeats.",
        "",
        "| step | JAX (ms) | torch 2.13, 1 thread (ms) | torch / JAX |",
        "| --- | --- | --- | --- |",
    ]
    for what in dict.fromkeys(w for w, _, _ in rows):
        j, t = ms.get((what, "jax")), ms.get((what, "torch"))
        ratio = f"{t / j:.2f}" if j and t else "-"
        lines.append(
            f"| {what} | {j:.2f} | {t:.2f} | {ratio} |"
            if t
            else f"| {what} | {j:.2f} | - | - |"
        )
    (out / "default_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
