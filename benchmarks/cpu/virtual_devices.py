"""Both cores from one process: the population sharded over 2 virtual CPU devices, against 1.

Run it alone: ``python benchmarks/cpu/virtual_devices.py [--out benchmarks/cpu/results]``.
Writes ``virtual_devices.{jsonl,md}``.

``XLA_FLAGS=--xla_force_host_platform_device_count=D`` gives one process D CPU devices; the
library then shards the population over them (``gtl_jax.population``: the ``loop`` strategy
runs member j of every device's shard as one ``shard_map`` program, and XLA CPU runs the
devices' parts concurrently). Timed: one SGD step of P VGG11 networks (32x32, batch 64, as in
``population_speed.py``), images/s, the median of timed repeats, each D in a fresh subprocess
(with ``configure_jax``'s settings, compilation cache off); with ``--no-eigen-threads`` also
D = 1 and 2 with ``--xla_cpu_multi_thread_eigen=false`` (each op on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def worker(spec: dict) -> None:
    from gtl_jax.experiment import configure_jax

    configure_jax()
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from gtl_jax.executors import population_map
    from gtl_jax.models import build_model
    from gtl_jax.population import (
        init_network,
        make_optimizer,
        population_mesh,
        population_sharding,
        stack,
        train_step,
    )

    jax.config.update("jax_enable_compilation_cache", False)
    pop, width = spec["pop"], spec["width"]
    model = build_model("vgg11", 5, width=width)
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    step = functools.partial(train_step, model, tx)
    keys = jax.random.split(jax.random.key(0), pop)
    state = stack([init_network(model, tx, k, (32, 32, 3)) for k in keys])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (pop, 64, 32, 32, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 5, (pop, 64)).astype(np.int32))
    mesh = population_mesh()
    if mesh is not None:
        state, x, y = jax.device_put((state, x, y), population_sharding(mesh))
    fn = population_map(step, (0, 0, 0), strategy="loop")
    start = time.perf_counter()
    state, _ = fn(state, x, y)
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        state, _ = fn(state, x, y)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                **spec,
                "devices": jax.device_count(),
                "first_call_s": round(first, 2),
                "images_per_s": round(pop * 64 / statistics.median(times), 1),
                "images_per_s_all": [round(pop * 64 / t, 1) for t in times],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="0.25,1")
    parser.add_argument("--pop", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--no-eigen-threads", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    rows = []
    for width in (float(w) for w in args.widths.split(",")):
        variants = [(1, ""), (2, "")]
        if args.no_eigen_threads:
            off = "--xla_cpu_multi_thread_eigen=false"
            variants += [(1, off), (2, off)]
        for devices, flags in variants:
            spec = {"width": width, "pop": args.pop, "repeats": args.repeats}
            env = dict(os.environ)
            env["XLA_FLAGS"] = " ".join(
                [f"--xla_force_host_platform_device_count={devices}", flags]
            ).strip()
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["xla_flags"] = env["XLA_FLAGS"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cpu/virtual_devices.py " + " ".join(sys.argv[1:])
    with (out / "virtual_devices.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "command": command.strip()}) + "\n")
    lines = [
        "# One process, 1 or 2 CPU devices (`benchmarks/cpu/virtual_devices.py`)",
        "",
        f"Command: `{command.strip()}`; {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores.",
        f"One SGD step of P={args.pop} VGG11 (32x32, batch 64), the library loop; images/s.",
        "",
        "| width | devices | XLA_FLAGS | images/s (median) | repeats | first call s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']:g} | {r['devices']} | `{r['xla_flags']}` | {r['images_per_s']} "
            f"| {r['images_per_s_all']} | {r['first_call_s']} |"
        )
    (out / "virtual_devices.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
