"""Shared timing of one population SGD step, each configuration in its own subprocess.

Not a benchmark: ``vs_pytorch.py`` (the library against PyTorch, same process layout) and
``strategies.py`` (loop, vmap and worker processes side by side) run it. It times one SGD
step (``make_optimizer("sgd", 0.05, weight_decay=5e-4)``, momentum 0.9,
``gtl_jax.population.train_step``) of each of P VGG11 networks (``build_model("vgg11", 5,
width=w)``) on its own batch of random u8 32x32x3 images, by one strategy:

- ``loop``, ``vmap``: ``gtl_jax.executors.population_map(train_step, strategy=..., carry=0)``
  over the stacked population, the state donated (and, ``loop``, updated in place), as the
  evolution's lifetime step runs; ``loop`` is ``"auto"`` on CPU, ``vmap`` on GPU/TPU;
- ``procs2``: two processes pinned one per core, each the library ``loop`` over P/2 members:
  the layout of ``python -m gtl_jax.evolve``'s worker processes on a 2-core CPU
  (``execution.workers=0``);
- ``torch``: a PyTorch loop over P networks in one process (``--torch-threads`` threads);
- ``torch_procs2``: PyTorch in the ``procs2`` layout: two processes pinned one per core, one
  thread each, each a loop over P/2 networks.

Each (width, P, strategy) runs in a fresh subprocess, so its compile time and memory are its
own. ``first_call_s``: the first step (compilation + one step); one warm-up step follows; then
the median of timed repeats of ``k`` steps (``k`` so that a repeat lasts at least
``min_repeat_s``), each ending on ``jax.block_until_ready``; ``compile_s`` = first call - steady
step. The two processes of ``procs2``/``torch_procs2`` start each timed repeat together (a
barrier through their stdin): images/s = the repeat's images / (last end - first start). JAX
runs with the command line's settings (``gtl_jax.experiment.configure_jax``: non-partitionable
threefry, ``CPU_XLA_FLAGS``) without the persistent compilation cache. Network values are
drawn with numpy at the library init's shapes and scales (values do not change a step's
cost; jitting the init would add seconds of compilation to every subprocess).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata

HERE = pathlib.Path(__file__).resolve().parent
IMAGE = (32, 32, 3)
STRATEGIES = ("loop", "vmap", "procs2", "torch", "torch_procs2")
PROCS2_STRATEGIES = ("procs2", "torch_procs2")
TORCH_STRATEGIES = ("torch", "torch_procs2")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Machine and versions, for every JSON line (the backend and device come from a worker)."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("jax", "jaxlib", "flax", "torch")},
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


# ---------------------------------------------------------------------------------------------
# Worker side (each runs in its own subprocess).


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _plan(step_s: float, spec: dict) -> tuple[int, int]:
    """(steps per repeat, repeats) for a step of ``step_s`` seconds."""
    per_repeat = max(1, math.ceil(spec["min_repeat_s"] / max(step_s, 1e-9)))
    repeats = int(spec["budget_s"] // (per_repeat * step_s))
    return per_repeat, max(spec["min_repeats"], min(spec["max_repeats"], repeats))


def _numpy_init(shapes, rng):
    """A network state of ``init_network``'s shapes, drawn with numpy at the library's scales:
    conv kernels N(0, 2 / fan_in), head N(0, 1 / fan_in), BatchNorm scale 1, biases 0, running
    variance 1, optimiser state 0."""
    import jax
    import numpy as np

    def leaf(path, a):
        name = str(getattr(path[-1], "key", getattr(path[-1], "name", "")))
        top = str(getattr(path[0], "name", ""))
        if top == "params" and name == "kernel":
            fan_in = math.prod(a.shape[:-1])
            std = math.sqrt((2.0 if len(a.shape) == 4 else 1.0) / fan_in)
            return rng.normal(0.0, std, a.shape).astype(a.dtype)
        if top in ("params", "batch_stats") and name in ("scale", "var"):
            return np.ones(a.shape, a.dtype)
        return np.zeros(a.shape, a.dtype)

    return jax.tree.map(
        jax.numpy.asarray, jax.tree_util.tree_map_with_path(leaf, shapes)
    )


def _setup_jax(spec: dict):
    """``(run, state, block, extra)`` for the library strategies (loop, vmap, procs2)."""
    import functools

    from gtl_jax.experiment import configure_jax

    configure_jax()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gtl_jax.executors import population_map, resolve_strategy
    from gtl_jax.models import build_model
    from gtl_jax.population import init_network, make_optimizer, stack, train_step

    jax.config.update("jax_enable_compilation_cache", False)
    pop, batch = spec["members"], spec["batch"]
    model = build_model("vgg11", spec["classes"], width=spec["width"])
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    step = functools.partial(train_step, model, tx)
    rng = np.random.default_rng(spec["seed"])
    shapes = jax.eval_shape(lambda: init_network(model, tx, jax.random.key(0), IMAGE))
    state = stack([_numpy_init(shapes, rng) for _ in range(pop)])
    x = jnp.asarray(rng.integers(0, 256, (pop, batch, *IMAGE), np.uint8))
    y = jnp.asarray(rng.integers(0, spec["classes"], (pop, batch)).astype(np.int32))
    strategy = "loop" if spec["strategy"] == "procs2" else spec["strategy"]
    fn = population_map(step, (0, 0, 0), strategy=strategy, carry=0)

    def run(state):
        return fn(state, x, y)[0]

    jax.block_until_ready(state)
    device = jax.devices()[0]
    extra = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "auto_strategy": resolve_strategy("auto"),
    }
    return run, state, jax.block_until_ready, extra


def _setup_torch(spec: dict):
    import _torch_vgg
    import torch

    torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(spec["seed"])
    pop, batch = spec["members"], spec["batch"]
    models = [_torch_vgg.build(spec["classes"], spec["width"]) for _ in range(pop)]
    opts = [_torch_vgg.make_sgd(m, 0.05, weight_decay=5e-4) for m in models]
    x = torch.randint(0, 256, (pop, batch, *IMAGE), dtype=torch.uint8)
    y = torch.randint(0, spec["classes"], (pop, batch))

    def run(state):
        for i in range(pop):
            _torch_vgg.train_step(models[i], opts[i], x[i], y[i])
        return state

    extra = {"backend": "torch-cpu", "torch_threads": torch.get_num_threads()}
    return run, None, lambda s: s, extra


def worker(spec: dict) -> None:
    """Times one configuration; prints one JSON line (``serve``: the procs2 protocol)."""
    if spec.get("core") is not None:
        # Before JAX or torch start their threads.
        os.sched_setaffinity(0, {spec["core"]})
    setup = _setup_torch if spec["strategy"] in TORCH_STRATEGIES else _setup_jax
    run, state, block, extra = setup(spec)
    start = time.perf_counter()
    state = block(run(state))
    first = time.perf_counter() - start
    start = time.perf_counter()
    state = block(run(state))  # warm-up
    warm = time.perf_counter() - start
    base = {"first_call_s": first, "warmup_step_s": warm, **extra}
    if spec.get("serve"):
        # procs2: report readiness, then run "go K" repeats on command, timestamps on a clock
        # shared by all processes (CLOCK_MONOTONIC).
        print(json.dumps({"ready": True, **base}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[0] != "go":
                break
            t0 = time.monotonic()
            for _ in range(int(words[1])):
                state = run(state)
            block(state)
            print(json.dumps({"start": t0, "end": time.monotonic()}), flush=True)
        print(json.dumps({"peak_mib": _peak_mib()}), flush=True)
        return
    per_repeat, repeats = _plan(warm, spec)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_repeat):
            state = run(state)
        block(state)
        times.append((time.perf_counter() - start) / per_repeat)
    step_s = statistics.median(times)
    images = spec["members"] * spec["batch"]
    print(
        json.dumps(
            {
                **base,
                "step_s": step_s,
                "step_s_all": times,
                "steps_per_repeat": per_repeat,
                "images_per_s": images / step_s,
                "compile_s": max(0.0, first - step_s),
                "peak_mib": _peak_mib(),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# Driver side.


def _python(args: list[str], spec: dict) -> list[str]:
    return [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        *args,
        json.dumps(spec),
    ]


def run_json(argv: list[str], timeout: float) -> dict:
    """Runs a worker subprocess (in benchmarks/, so that it imports _torch_vgg); its last
    stdout line is JSON."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=str(HERE)
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_procs2(spec: dict, cores: list[int], timeout: float) -> dict:
    """Two pinned processes over P/2 members each, repeats behind a barrier."""
    children = []
    for core in cores[:2]:
        child = {**spec, "members": spec["pop"] // 2, "core": core, "serve": True}
        if spec["strategy"] == "torch_procs2":
            child["torch_threads"] = 1
        children.append(
            subprocess.Popen(
                _python(["--worker"], child),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(HERE),
            )
        )
    try:

        def read(p):
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"procs2 worker died: {p.stderr.read()[-2000:]}")
            return json.loads(line)

        ready = [read(p) for p in children]
        warm = max(r["warmup_step_s"] for r in ready)
        per_repeat, repeats = _plan(warm, spec)
        times = []
        for _ in range(repeats):
            for p in children:
                p.stdin.write(f"go {per_repeat}\n")
                p.stdin.flush()
            spans = [read(p) for p in children]
            wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
            times.append(wall / per_repeat)
        for p in children:
            p.stdin.write("quit\n")
            p.stdin.flush()
        peaks = [read(p)["peak_mib"] for p in children]
        for p in children:
            p.wait(timeout=timeout)
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
    step_s = statistics.median(times)
    first = max(r["first_call_s"] for r in ready)
    extra = {k: v for k, v in ready[0].items() if k not in ("ready", "first_call_s")}
    return {
        **extra,
        "first_call_s": first,
        "warmup_step_s": warm,
        "step_s": step_s,
        "step_s_all": times,
        "steps_per_repeat": per_repeat,
        "images_per_s": spec["pop"] * spec["batch"] / step_s,
        "compile_s": max(0.0, first - step_s),
        "peak_mib": sum(peaks),
        "pinned_cores": cores[:2],
    }


def measure(spec: dict, timeout: float) -> dict:
    """One (width, pop, strategy) of ``spec``; raises RuntimeError or TimeoutExpired."""
    if spec["strategy"] in PROCS2_STRATEGIES:
        cores = sorted(os.sched_getaffinity(0))
        if spec["pop"] % 2 or len(cores) < 2:
            raise RuntimeError("procs2 layouts need an even P and 2 cores")
        return run_procs2(spec, cores, timeout)
    return run_json(_python(["--worker"], {**spec, "members": spec["pop"]}), timeout)


def add_timing_flags(parser, widths: str, pops: str, strategies: str) -> None:
    parser.add_argument("--widths", default=widths, help="VGG11 width multipliers")
    parser.add_argument("--pops", default=pops, help="population sizes P")
    parser.add_argument("--strategies", default=strategies)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=12.0)
    parser.add_argument("--min-repeats", type=int, default=2)
    parser.add_argument("--max-repeats", type=int, default=5)
    parser.add_argument("--min-repeat-s", type=float, default=0.5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    parser.add_argument("--out", help="JSON lines file (overwritten)")


def specs(args) -> list[dict]:
    """The (width, pop, strategy) configurations of the parsed timing flags, in order."""
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}; known: {STRATEGIES}")
    common = {
        "batch": args.batch,
        "classes": args.classes,
        "seed": 0,
        "budget_s": args.budget_s,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "min_repeat_s": args.min_repeat_s,
        "torch_threads": args.torch_threads,
    }
    return [
        {**common, "width": float(w), "pop": int(p), "strategy": s}
        for w in args.widths.split(",")
        for p in args.pops.split(",")
        for s in strategies
    ]


def check_worker(spec: dict) -> None:
    """``_torch_vgg.check`` in a subprocess: the driver stays small, since a child's
    ``ru_maxrss`` starts from its parent's."""
    import _torch_vgg

    print(json.dumps(_torch_vgg.check(spec["width"], spec["classes"])), flush=True)


def check(width: float, classes: int, timeout: float) -> dict:
    return run_json(_python(["--check"], {"width": width, "classes": classes}), timeout)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--check":
        check_worker(json.loads(sys.argv[2]))
    else:
        raise SystemExit(
            "a worker of vs_pytorch.py and strategies.py; run one of those"
        )
