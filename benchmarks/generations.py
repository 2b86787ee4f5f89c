"""Generations per second of the library's pure, jitted generation, on any backend.

Figure: generations/s and images/s of one generation (``evo.step``, sharded) and of S seeds
evolving G generations in one program (``jax.jit(jax.vmap(evo.run))``), for P = 8-64 and
S = 1, 2, 4, with compile seconds apart; the default config's networks (VGG11 x1/4, 28x28).
Against: itself across P and S in one run (the pure vmapped generation is the form GPU/TPU
run: ``strategy="auto"`` is ``vmap`` there).
Bound: images/s does not fall as the population or the seeds grow (images/s at P=64 over
P=8 >= 1.0, and at S=4 over S=1 >= 1.0, until the device's memory is full); read from the JSON
lines, the script does not check it.
Command: ``python benchmarks/generations.py`` (``--tiny``: a check of the script, about a
minute on CPU).
Last measured: never on a GPU or TPU (this project's machines are CPUs); ``--tiny`` on CPU
only checks that it runs.

The accelerator suite: it times ``gtl_jax.evolution.Evolution``'s pure functions, the form a
GPU or TPU runs (every member vmapped, lifetimes in ``lax.scan``, critics vmapped), against the
population size P and the number of seeds evolved at once, with the default config's networks.
Run on a GPU/TPU machine (``pip install -e '.[gpu]'`` for CUDA, ``jax[tpu]`` on a TPU VM):

    python benchmarks/generations.py                       # P 8,16,32,64; seeds 1,2,4
    python benchmarks/generations.py --precision bfloat16  # mixed precision
    python benchmarks/generations.py --tiny                # a check of this script (CPU: ~1 min)

Measurements (one JSON line each, written to ``--out`` as it goes):

- ``step``: one generation for each P (one seed), the population padded to a multiple of
  the devices and sharded over them (``gtl_jax.Placement(P).jit_generation(evo)``; on one
  device ``jax.jit(evo.step)``): the unit the command calls once per generation.
- ``run``: ``jax.jit(jax.vmap(lambda k, s, pools: evo.run(k, s, pools, generations=G),
  in_axes=(0, 0, None)))`` for each P and each number of seeds S in ``--seeds``: S whole
  populations evolve G (``--generations``) generations in one program, each from its own key
  and ``evo.init`` state.

Each line: the device (``device_kind``, ``device_count``, ``backend``, ``platform_version``),
the versions (jax, jaxlib, flax, python), the sizes (model, width, precision, forms, image
shape, P, S, G and the config's lifetime and critic sizes), ``compile_s`` (lower + compile,
persistent compilation cache off unless ``--cache``), the steady-state seconds of one call
(``call_s``: median of ``--repeats`` timed calls after a warm-up call, all in ``call_s_all``),
``seconds_per_generation`` (``call_s / G``: all S seeds advance one generation in it),
``generations_per_s`` (S * G / ``call_s``: seed-generations), ``images_per_s`` (S * G *
(``life_images`` + ``critic_images``) / ``call_s``, where per generation ``life_images`` = P *
life_steps * life_batch lifetime training images and ``critic_images`` = P * num_critics *
(critic_steps * way * shot support images trained on + way * query query images)), and ``memory_peak_bytes`` (the device's ``memory_stats()`` peak,
where the backend reports it; it is cumulative over the run, so read it for the largest size).

The networks and sizes are the config's (``--config``, default ``omniglot``, the default
config: VGG11 x1/4, 28x28x1, 50-way lifetimes of 100 steps, 4 critics of 20 steps); flags
override them. Images are random u8 pools of the shapes of the config's dataset (``--data
synthetic``, the default: the cost of a generation does not depend on the pixels, and no
download is needed) or the dataset itself (``--data config``). The
networks are built with the models' ``forms`` (``--forms``, default ``auto``: ``xla`` on
GPU/TPU, the CPU forms on CPU). No CPU XLA flag is set; on CPU the library's default
execution is not this pure form but host loops of per-member functions in worker processes
(``benchmarks/strategies.py``, ``docs/cpu.md``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

HERE = pathlib.Path(__file__).resolve().parent

# Omniglot's meta-train and meta-validation pools (classes, images per class) in the default
# split: the shapes of the synthetic pools (channels: 1 for omniglot, 3 for other datasets).
SYNTHETIC_POOLS = {"train": (787, 20), "val": (177, 20)}
# --tiny: about a minute on a CPU; checks the script, measures nothing worth keeping. The XLA
# forms, as on GPU/TPU (and they compile about twice as fast on CPU as the CPU forms).
TINY = {
    "pop_sizes": "2",
    "seeds": "2",
    "forms": "xla",
    "generations": 2,
    "repeats": 2,
    "width": 1 / 16,
    "tournament_size": 2,
    "life_way": 5,
    "life_steps": 2,
    "life_batch": 8,
    "num_critics": 1,
    "critic_steps": 2,
    "critic_query": 2,
    "pool_classes": 12,
}


# EvolutionConfig fields a flag overrides (--tournament_size has its own default).
EVOLUTION_FLAGS = (
    "tournament_size",
    "life_way",
    "life_steps",
    "life_batch",
    "num_critics",
    "critic_steps",
    "critic_query",
)


def parse_ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def versions() -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in ("jax", "jaxlib", "flax")} | {
        "python": platform.python_version()
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(jax) -> dict:
    devices = jax.devices()
    client = getattr(devices[0], "client", None)
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform_version": getattr(client, "platform_version", None),
    }


def memory_peak(jax) -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def build(args, config, pop_size: int, pools_np: dict):
    """The config's ``Evolution`` (``gtl_jax.experiment.make_evolution``, with this run's
    sizes and ``--forms``) on ``pools_np``."""
    import jax.numpy as jnp

    from gtl_jax.evolution import Evolution, EvolutionConfig
    from gtl_jax.experiment import critic_recipe
    from gtl_jax.learngene import make_spec
    from gtl_jax.models import PRECISIONS, build_model

    evolution = dict(config.evolution)
    evolution.update(pop_size=pop_size, generations=args.generations)
    for name in EVOLUTION_FLAGS:
        if getattr(args, name) is not None:
            evolution[name] = getattr(args, name)
    config = config.copy_and_resolve_references()
    config.evolution.update(evolution)
    evo_config = EvolutionConfig(**config.evolution)
    dtype = PRECISIONS[args.precision]

    def model(num_classes):
        return build_model(
            args.model, num_classes, width=args.width, dtype=dtype, forms=args.forms
        )

    life_model = model(evo_config.life_way)
    channels = pools_np["train"].shape[-1]
    evo = Evolution(
        life_model,
        model(evo_config.critic_way),
        make_spec(life_model, args.ratio, channels),
        evo_config,
        critic_recipe(config),
        jnp.asarray(pools_np["train"]),
        jnp.asarray(pools_np["val"]),
    )
    return evo, evo_config


def load_pools(args, config) -> dict:
    """u8[C, M, H, W, Ch] train and val pools: random (synthetic), or the config's dataset
    (``gtl_jax.experiment.load_pools``)."""
    import numpy as np

    if args.data == "synthetic":
        size = config.data.image_size
        channels = 1 if config.data.dataset == "omniglot" else 3
        rng = np.random.default_rng(0)
        pools = {}
        for split, (classes, per_class) in SYNTHETIC_POOLS.items():
            classes = args.pool_classes or classes
            pools[split] = rng.integers(
                0, 256, (classes, per_class, size, size, channels), np.uint8
            )
        return pools
    from gtl_jax.experiment import load_pools as load_config_pools

    loaded = load_config_pools(config)
    return {split: np.asarray(loaded[split].images) for split in ("train", "val")}


def images_per_generation(c) -> dict:
    """What one generation of one population trains on and evaluates (see the docstring)."""
    life = c.pop_size * c.life_steps * c.life_batch
    critic = (
        c.pop_size
        * c.num_critics
        * (
            c.critic_steps * c.critic_way * c.critic_shot
            + c.critic_way * c.critic_query
        )
    )
    return {"life_images": life, "critic_images": critic}


def timed_calls(jax, call, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``call`` (each blocked on), after one warm-up call."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def measure_step(jax, evo, pools, repeats: int) -> dict:
    """One generation as the command runs it on accelerators: ``evo.step`` with the
    population padded and sharded over every device (``Placement.jit_generation``; on one
    device ``jax.jit(evo.step)``), the state carried from call to call."""
    from gtl_jax.sharding import Placement

    placement = Placement(evo.config.pop_size)
    init_key, root_key = jax.random.split(jax.random.key(0))
    state = placement.place(jax.jit(evo.init)(init_key))
    pools = placement.replicate(pools)
    step = placement.jit_generation(evo)
    start = time.perf_counter()
    compiled = step.lower(root_key, state, pools).compile()
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def call():
        box["state"], metrics = compiled(root_key, box["state"], pools)
        return metrics

    return {"compile_s": compile_s, "times": timed_calls(jax, call, repeats)}


def measure_run(jax, evo, pools, seeds: int, generations: int, repeats: int) -> dict:
    """S populations, G generations each, ``jax.jit(jax.vmap(evo.run))`` from their
    ``evo.init`` states (each call starts from the same states)."""
    keys = jax.random.split(jax.random.key(0), seeds)
    init_keys, root_keys = keys, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    states = jax.jit(jax.vmap(evo.init))(init_keys)
    run = jax.jit(
        jax.vmap(
            lambda k, s, pools: evo.run(k, s, pools, generations=generations),
            in_axes=(0, 0, None),
        )
    )
    start = time.perf_counter()
    compiled = run.lower(root_keys, states, pools).compile()
    compile_s = time.perf_counter() - start

    def call():
        return compiled(root_keys, states, pools)[1]

    return {"compile_s": compile_s, "times": timed_calls(jax, call, repeats)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="JSON lines file (overwritten); default "
        "benchmarks/results/generations_<backend>_<device kind>[_tiny].jsonl",
    )
    parser.add_argument("--pop_sizes", default="8,16,32,64")
    parser.add_argument(
        "--seeds", default="1,2,4", help="numbers of seeds evolved at once (vmapped)"
    )
    parser.add_argument(
        "--generations", type=int, default=3, help="G: generations in one timed run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls each")
    parser.add_argument("--model", help="default: the config's (vgg11)")
    parser.add_argument("--width", type=float, help="default: the config's (0.25)")
    parser.add_argument("--ratio", type=float, help="default: the config's (0.45)")
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16"), help="default: the config's"
    )
    parser.add_argument(
        "--forms",
        default="auto",
        choices=("auto", "cpu", "xla"),
        help="the models' layer forms (auto: xla on GPU/TPU, cpu on CPU)",
    )
    parser.add_argument(
        "--tournament_size",
        type=int,
        default=4,
        help="divides every P (the config's 3 does not divide 8-64; selection's cost is "
        "negligible)",
    )
    for name in EVOLUTION_FLAGS[1:]:
        parser.add_argument(f"--{name}", type=int, help="default: the config's")
    parser.add_argument(
        "--config",
        default="omniglot",
        help="the config whose networks and sizes are measured (NAME[:ARG] or PATH.py)",
    )
    parser.add_argument(
        "--data",
        default="synthetic",
        choices=("synthetic", "config"),
        help="random pools of the config's dataset's shapes, or the dataset itself",
    )
    parser.add_argument(
        "--pool_classes",
        type=int,
        help="classes per synthetic pool (default: Omniglot's 787 train, 177 val)",
    )
    parser.add_argument(
        "--skip_step", action="store_true", help="only the vmapped runs"
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="keep JAX's persistent compilation cache if configured (compile_s may then "
        "be a cache load)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="toy sizes (width 1/16, P 2, 2 seeds, 2 lifetime steps, the xla forms): "
        "checks the script in about a minute on CPU",
    )
    if "--tiny" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**TINY)  # flags given explicitly still win
    args = parser.parse_args(argv)

    import jax

    if not args.cache:
        jax.config.update("jax_enable_compilation_cache", False)
    from gtl_jax.experiment import load_config

    config = load_config(args.config)
    for name, field in (
        ("model", "name"),
        ("width", "width"),
        ("ratio", "ratio"),
        ("precision", "precision"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, config.model[field])
    pop_sizes, seed_counts = parse_ints(args.pop_sizes), parse_ints(args.seeds)
    device = device_info(jax)
    kind = "".join(ch if ch.isalnum() else "_" for ch in device["device_kind"])
    name = "_".join(
        dict.fromkeys([device["backend"], kind.strip("_").lower()])  # cpu, not cpu_cpu
    )
    out = args.out or HERE / "results" / (
        f"generations_{name}{'_tiny' if args.tiny else ''}.jsonl"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pools_np = load_pools(args, config)
    common = {
        "benchmark": "generations",
        **device,
        **versions(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python benchmarks/generations.py", *sys.argv[1:]]),
        "config": args.config,
        "dataset": config.data.dataset,
        "tiny": args.tiny,
        "data": args.data,
        "model": args.model,
        "width": args.width,
        "ratio": args.ratio,
        "precision": args.precision,
        "forms": args.forms,
        "image_shape": list(pools_np["train"].shape[2:]),
        "pool_classes": {s: int(p.shape[0]) for s, p in pools_np.items()},
    }
    print(
        f"{device['backend']} x{device['device_count']} ({device['device_kind']}); "
        f"{args.model} x{args.width:g} {args.precision}, forms {args.forms}; "
        f"writing {out}",
        flush=True,
    )
    with out.open("w") as f:
        for pop_size in pop_sizes:
            evo, c = build(args, config, pop_size, pools_np)
            pools = evo.pools
            sizes = {
                "pop_size": pop_size,
                "tournament_size": c.tournament_size,
                "life_way": c.life_way,
                "life_steps": c.life_steps,
                "life_batch": c.life_batch,
                "num_critics": c.num_critics,
                "critic_way": c.critic_way,
                "critic_shot": c.critic_shot,
                "critic_query": c.critic_query,
                "critic_steps": c.critic_steps,
                **images_per_generation(c),
            }
            plan = [("step", 1, 1)] if not args.skip_step else []
            plan += [("run", s, args.generations) for s in seed_counts]
            for kind, seeds, generations in plan:
                if kind == "step":
                    result = measure_step(jax, evo, pools, args.repeats)
                else:
                    result = measure_run(
                        jax, evo, pools, seeds, generations, args.repeats
                    )
                call_s = statistics.median(result["times"])
                per_generation = sizes["life_images"] + sizes["critic_images"]
                row = {
                    **common,
                    "kind": kind,
                    **sizes,
                    "seeds": seeds,
                    "generations": generations,
                    "compile_s": round(result["compile_s"], 3),
                    "call_s": call_s,
                    "call_s_all": result["times"],
                    "seconds_per_generation": call_s / generations,
                    "generations_per_s": seeds * generations / call_s,
                    "images_per_s": seeds * generations * per_generation / call_s,
                    "memory_peak_bytes": memory_peak(jax),
                }
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(
                    f"{kind:4s} P={pop_size:<3d} seeds={seeds} G={generations}: "
                    f"compile {row['compile_s']:.1f} s, "
                    f"{row['seconds_per_generation']:.4g} s/generation, "
                    f"{row['generations_per_s']:.3g} generations/s, "
                    f"{row['images_per_s']:,.0f} images/s",
                    flush=True,
                )
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
