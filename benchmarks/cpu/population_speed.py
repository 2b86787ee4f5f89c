"""Speed of the population train step per strategy and population size, against two baselines.

Run it alone (the cores are shared; estimated 15-18 minutes on 2 quiet cores for the default):

    python benchmarks/cpu/population_speed.py  # writes benchmarks/cpu/results/population_speed.*
    python benchmarks/cpu/population_speed.py --quick --out /tmp/ps  # validation (~3-5 min)

Needs torch for the ``torch`` baseline: ``pip install -e '.[bench]'`` (torch 2.13.0, CPU);
without it that strategy is skipped.

What is timed: one SGD step (``make_optimizer("sgd", 0.05, weight_decay=5e-4)``, momentum 0.9,
``gtl_jax.population.train_step``) of each of P VGG11 networks (``build_model("vgg11", 5,
width=w)``: 5-way linear head) on its own batch of 64 random u8 32x32x3 images, no
augmentation, for each width w (``--widths``, default 0.25 and 1) and each P (``--pops``,
default 1, 4, 8, 16), by each strategy (``--strategies``):

- ``loop``, ``vmap``: ``gtl_jax.population.population_map(train_step, strategy=...,
  carry=0)`` over the stacked population, the state donated and (``loop``) updated in place,
  as the evolution's lifetime step runs (``loop`` is the library's default, ``"auto"``, on CPU);
- ``loop_lax``: ``loop`` without the library's CPU forms (``gtl_jax.models.layers``: lax.conv's
  own kernel gradient, nn.max_pool), without ``gtl_jax.experiment.CPU_XLA_FLAGS`` and without
  ``carry`` (a new stacked population after every step): the library's default as it ran
  before them, so the table shows what they are worth;
- ``unroll``: the P members traced one after another inside one jit (not a library strategy);
- ``single``: baseline (a), a Python loop over P separate (unstacked) states, each stepped by
  one jitted single-network step (the library's layers and XLA flags, like ``loop``);
- ``torch``: baseline (b), a PyTorch CPU loop over P networks (``benchmarks/cpu/torch_vgg.py``: the
  same network, checked against the JAX one at the start of every width), ``torch`` threads 2;
- ``procs2``: two OS processes, each pinned to one core, each running the library ``loop`` over
  P/2 members; both start each timed repeat together (a barrier through their stdin);
  images/s = all images of a repeat / (last end - first start). This is how ``python -m
  gtl_jax.evolve`` trains its population on a 2-core CPU by default (``execution.workers=0``: the
  members split between worker processes pinned one per core, ``gtl_jax.experiment.LifeWorkers``),
  where the processes meet once per generation, not every few steps. Skipped for odd P.
- ``torch_procs2``: the same process layout with PyTorch: two processes pinned one per core,
  one torch thread each, each the PyTorch loop over P/2 members, behind the same barrier; the
  PyTorch baseline to set against ``procs2`` (``torch`` is one process with
  ``--torch-threads``).

``--compile-pops`` (default 2) adds, for loop, vmap and unroll, a P measured for its compile
time only (first step and one timed step; marked ``*`` in the table), so that the compile time
at P=16 can be compared with P=2. ``--quick``: width 0.0625, P 1 and 2, one repeat.

The JAX networks' starting values are drawn with numpy at the library init's scales and shapes
(``_numpy_init``: jitting the real init would add about 2 s of compilation to every
subprocess); values do not change the cost of a step. Every step is applied (the state is
threaded through the steps), as in training.

Each (width, P, strategy) runs in a fresh subprocess, so its ``compile_s`` and peak memory are
its own: ``first_call_s`` is the first population step (compilation + one step; torch: first
step), ``compile_s`` = first_call_s - steady step time; ``peak_mib`` is the subprocess's
``ru_maxrss`` (for procs2 the sum of both processes), including the runtime itself
(``rss_setup_mib``: after imports and initialising the P networks, before the first step).
JAX runs with the command line's settings (``gtl_jax.experiment.configure_jax``: non-partitionable
threefry, ``CPU_XLA_FLAGS``; ``loop_lax`` without those flags), except the persistent compilation cache, which is off. Steady state: one warm-up step after the first,
then the median of timed repeats of ``k`` steps (``k`` so that a repeat lasts at least
``--min-repeat-s``; at least ``--min-repeats``, at most ``--max-repeats``, about ``--budget-s``
of timed work). A configuration is skipped when the same strategy's rate at the previous P
predicts one population step longer than ``--max-step-s`` (e.g. vmap at full width).

FLOPs: XLA's cost analysis (``jax.jit(step).lower(...).compile().cost_analysis()["flops"]``) of
the compiled single-network train step in the lax formulation (as ``loop_lax`` runs it; the CPU
forms' shifted-matmul kernel gradient computes, and XLA counts, the padding taps too), divided
by the batch: what XLA counts for the HLO it
runs: convs, dots, elementwise, BatchNorm, optimiser; no input gradient for the first conv;
a 'SAME' conv counts only the taps inside the image, not those on the zero padding (a 3x3 conv
on a 4x4 map counts 69% of 9 taps per pixel, on 2x2 44%; the shifted-matmul form of small and
wide 4x4 maps computes and counts those taps only). So it is below the analytic count, also
reported for comparison:
3 x 2 x multiply-adds of the convs (all 9 taps) and the head. The same FLOPs per image are
used for every strategy, torch included. The matmul peak is measured in the same run: best of
N ``jnp.dot`` (and ``torch.mm``) of two f32 2048x2048 matrices on both cores (and, for JAX, in
a process pinned to one core). ``% peak`` is achieved FLOP/s over the JAX 2-core peak.

Outputs (``--out``, default benchmarks/cpu/results): ``population_speed.jsonl`` (one line per
measurement, skip, peak and cost analysis, each with versions and the command),
``population_speed.md`` (the table, the command on top), ``population_speed.png`` (images/s
against P per strategy, one panel per width).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata

HERE = pathlib.Path(__file__).resolve().parent
IMAGE = (32, 32, 3)
STRATEGIES = (
    "loop",
    "loop_lax",
    "vmap",
    "unroll",
    "single",
    "torch",
    "procs2",
    "torch_procs2",
)
# Two processes pinned one per core, each stepping half the population; the torch one runs one
# thread per process.
PROCS2_STRATEGIES = ("procs2", "torch_procs2")
TORCH_STRATEGIES = ("torch", "torch_procs2")
# Strategies whose compiled program may depend on P (--compile-pops).
COMPILE_STRATEGIES = ("loop", "vmap", "unroll")
# The library's CPU forms (gtl_jax.models.layers) and XLA flags (gtl_jax.experiment.CPU_XLA_FLAGS),
# which ``loop_lax`` turns off: the library's loop as it ran before them.
LAX_STRATEGIES = ("loop_lax",)


# ---------------------------------------------------------------------------------------------
# Worker side (each runs in its own subprocess).


def _rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _plan(step_s: float, spec: dict) -> tuple[int, int]:
    """(steps per repeat, repeats) for a step of ``step_s`` seconds."""
    per_repeat = max(1, math.ceil(spec["min_repeat_s"] / max(step_s, 1e-9)))
    repeats = int(spec["budget_s"] // (per_repeat * step_s))
    return per_repeat, max(spec["min_repeats"], min(spec["max_repeats"], repeats))


def _numpy_init(shapes, rng):
    """A network state of ``init_network``'s shapes, drawn with numpy at the library's scales.

    Conv kernels N(0, 2 / fan_in), head N(0, 1 / fan_in), BatchNorm scale 1, biases 0, running
    variance 1, optimiser state 0. The values do not change the speed of a step; jitting the
    real init would add about 2 s of compilation to every measuring subprocess.
    """
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


def _import_jax(strategy: str = "loop"):
    """JAX as gtl_jax.evolve's CLI sets it up (configure_jax), without its persistent
    compilation cache (each worker measures its own compile time); for ``LAX_STRATEGIES``
    without the library's CPU forms and CPU XLA flags."""
    import jaxlib

    from gtl_jax.experiment import CPU_XLA_FLAGS, configure_jax, cpu_xla_flags
    from gtl_jax.models import layers

    if strategy in LAX_STRATEGIES:
        # XLA's own kernel gradient and max-pool in place of those CPU forms (the layers look
        # both up when traced); shifted matmuls on small maps stay, as before them.
        layers.conv_matmul_kernel_grad = layers.lax_conv
        layers.reshaped_max_pool_2x2 = layers.xla_max_pool_2x2
        # configure_jax never overrides a flag already set: set XLA's own defaults (only
        # where this jaxlib knows the flags).
        known = bool(cpu_xla_flags("", jaxlib.__version__))
        defaults = [f"{f.split('=')[0]}=true" for f in CPU_XLA_FLAGS if known]
        os.environ["XLA_FLAGS"] = " ".join(
            [os.environ.get("XLA_FLAGS", ""), *defaults]
        ).strip()
    configure_jax()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    return jax


def _setup_jax(spec: dict):
    """Imports JAX in the worker; returns ``(run, state, block)`` for ``spec``'s strategy."""
    import functools

    jax = _import_jax(spec["strategy"])
    import jax.numpy as jnp
    import numpy as np

    from gtl_jax.executors import population_map
    from gtl_jax.models import build_model
    from gtl_jax.population import init_network, make_optimizer, stack, train_step

    pop, batch = spec["members"], spec["batch"]
    model = build_model("vgg11", spec["classes"], width=spec["width"])
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    step = functools.partial(train_step, model, tx)
    rng = np.random.default_rng(spec["seed"])
    shapes = jax.eval_shape(lambda: init_network(model, tx, jax.random.key(0), IMAGE))
    states = [_numpy_init(shapes, rng) for _ in range(pop)]
    x = rng.integers(0, 256, (pop, batch, *IMAGE), np.uint8)
    y = rng.integers(0, spec["classes"], (pop, batch)).astype(np.int32)
    strategy = spec["strategy"]
    if strategy == "single":
        one = jax.jit(step)
        xs = [jnp.asarray(a) for a in x]
        ys = [jnp.asarray(a) for a in y]

        def run(state):
            return [one(s, xs[i], ys[i])[0] for i, s in enumerate(state)]

        state = states
    else:
        if strategy == "unroll":

            def unrolled(state, x, y):
                outs = [
                    step(*jax.tree.map(lambda a, i=i: a[i], (state, x, y)))
                    for i in range(pop)
                ]
                return stack(outs)

            fn = jax.jit(unrolled)
        else:  # loop, vmap (the library; procs2 and loop_lax run "loop")
            library = {"procs2": "loop", "loop_lax": "loop"}.get(strategy, strategy)
            # The state carried (donated, updated in place) as gtl_jax.evolution's lifetime
            # step runs it; loop_lax as the library ran before that too.
            carry = None if strategy == "loop_lax" else 0
            fn = population_map(step, (0, 0, 0), strategy=library, carry=carry)
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        def run(state):
            return fn(state, xj, yj)[0]

        state = stack(states)
    jax.block_until_ready(state)
    return run, state, jax.block_until_ready


def _setup_torch(spec: dict):
    import torch
    import torch_vgg

    torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(spec["seed"])
    channels_last = spec["torch_format"] == "channels_last"
    pop, batch = spec["members"], spec["batch"]
    models = [
        torch_vgg.build(spec["classes"], spec["width"], channels_last=channels_last)
        for _ in range(pop)
    ]
    opts = [torch_vgg.make_sgd(m, 0.05, weight_decay=5e-4) for m in models]
    x = torch.randint(0, 256, (pop, batch, *IMAGE), dtype=torch.uint8)
    y = torch.randint(0, spec["classes"], (pop, batch))

    def run(state):
        for i in range(pop):
            torch_vgg.train_step(models[i], opts[i], x[i], y[i], channels_last)
        return state

    extra = {
        "torch_params": torch_vgg.param_count(models[0]),
        "torch_threads": torch.get_num_threads(),
        "torch_format": spec["torch_format"],
    }
    return run, None, lambda s: s, extra


def worker(spec: dict) -> None:
    """Times one configuration; prints one JSON line (``serve``: the procs2 protocol)."""
    if spec.get("core") is not None:
        os.sched_setaffinity(0, {spec["core"]})  # before JAX starts its threads
    extra = {}
    if spec["strategy"] in TORCH_STRATEGIES:
        run, state, block, extra = _setup_torch(spec)
    else:
        run, state, block = _setup_jax(spec)
    rss_setup = _rss_mib()
    start = time.perf_counter()
    state = block(run(state))
    first = time.perf_counter() - start
    start = time.perf_counter()
    state = block(run(state))
    warm = time.perf_counter() - start
    images = spec["members"] * spec["batch"]
    base = {
        "first_call_s": first,
        "warmup_step_s": warm,
        "rss_setup_mib": rss_setup,
        **extra,
    }
    if spec.get("serve"):
        # procs2: report readiness, then run "go K" repeats on command, timestamps on a clock
        # shared by all processes (CLOCK_MONOTONIC).
        print(json.dumps({"ready": True, **base}), flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[0] == "go":
                t0 = time.monotonic()
                for _ in range(int(words[1])):
                    state = run(state)
                block(state)
                print(json.dumps({"start": t0, "end": time.monotonic()}), flush=True)
            else:
                break
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
    result = {
        **base,
        "step_s": step_s,
        "step_s_all": times,
        "steps_per_repeat": per_repeat,
        "repeats": repeats,
        "images_per_s": images / step_s,
        "compile_s": max(0.0, first - step_s),
        "peak_mib": _peak_mib(),
    }
    print(json.dumps(result), flush=True)


def peak_worker(spec: dict) -> None:
    """Best-of-N f32 2048x2048 matmul GFLOP/s of JAX or torch."""
    if spec.get("core") is not None:
        os.sched_setaffinity(0, {spec["core"]})
    n, reps = spec["n"], spec["reps"]
    if spec["lib"] == "torch":
        import torch

        torch.set_num_threads(spec["torch_threads"])
        a, b = torch.randn(n, n), torch.randn(n, n)

        def mm():
            return torch.mm(a, b)

        block = lambda r: r  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        dot = jax.jit(jnp.dot)

        def mm():
            return dot(a, b)

        block = jax.block_until_ready
    for _ in range(3):
        block(mm())
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        block(mm())
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "best_s": best}), flush=True)


def cost_worker(spec: dict) -> None:
    """XLA's FLOPs of one network's train step, parameter counts, the torch model check."""
    import functools

    # FLOPs of the lax formulation: its 'SAME' convs count no padding taps, so a form that
    # computes more taps (the CPU forms' kernel gradient) does not count as more work.
    jax = _import_jax("loop_lax")
    import jax.numpy as jnp

    from gtl_jax.executors import resolve_strategy
    from gtl_jax.models import build_model
    from gtl_jax.population import init_network, make_optimizer, train_step

    width, batch, classes = spec["width"], spec["batch"], spec["classes"]
    model = build_model("vgg11", classes, width=width)
    tx = make_optimizer("sgd", 0.05, weight_decay=5e-4)
    state = jax.eval_shape(lambda: init_network(model, tx, jax.random.key(0), IMAGE))
    x = jax.ShapeDtypeStruct((batch, *IMAGE), jnp.uint8)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    compiled = jax.jit(functools.partial(train_step, model, tx)).lower(state, x, y)
    cost = compiled.compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    params = sum(math.prod(a.shape) for a in jax.tree.leaves(state.params))
    # Analytic: multiply-adds of the convs (3x3 'SAME') and the head, times 2 (FLOPs) times 3
    # (forward + backward).
    macs, hw, c_in = 0, IMAGE[0], IMAGE[2]
    for widths in model.stage_widths():
        for c in widths:
            macs += hw * hw * 9 * c_in * c
            c_in = c
        if hw > 2:
            hw //= 2
    macs += c_in * classes
    out = {
        "width": width,
        "batch": batch,
        "xla_flops_per_step": float(cost["flops"]),
        "xla_flops_per_image": float(cost["flops"]) / batch,
        "xla_bytes_accessed_per_step": float(cost.get("bytes accessed", float("nan"))),
        "analytic_train_flops_per_image": 6.0 * macs,
        "jax_params": params,
        "default_strategy": resolve_strategy("auto"),
        "backend": jax.default_backend(),
    }
    if spec.get("torch_check"):
        import torch_vgg

        out["torch_params"] = torch_vgg.param_count(torch_vgg.build(classes, width))
        assert out["torch_params"] == params, out
        out["torch_check"] = torch_vgg.check(width, classes, batch=8)
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver.


def _python(args: list[str], spec: dict) -> list[str]:
    return [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        *args,
        json.dumps(spec),
    ]


def _run_json(argv: list[str], timeout: float) -> dict:
    """Runs a worker subprocess; its last stdout line is JSON."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=str(HERE)
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_procs2(spec: dict, cores: list[int], timeout: float) -> dict:
    """Two pinned processes, each the library loop (``procs2``) or the PyTorch loop with one
    thread (``torch_procs2``) over P/2 members, repeats behind a barrier."""
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
    return {
        "first_call_s": first,
        "first_call_s_each": [r["first_call_s"] for r in ready],
        "warmup_step_s": warm,
        "rss_setup_mib": sum(r["rss_setup_mib"] for r in ready),
        "step_s": step_s,
        "step_s_all": times,
        "steps_per_repeat": per_repeat,
        "repeats": repeats,
        "images_per_s": spec["pop"] * spec["batch"] / step_s,
        "compile_s": max(0.0, first - step_s),
        "peak_mib": sum(peaks),
        "peak_mib_each": peaks,
        "cores": cores[:2],
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _fmt(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def write_markdown(path: pathlib.Path, rows: list[dict], meta: dict) -> None:
    steps = [r for r in rows if r["kind"] == "step"]
    peaks = {r["name"]: r for r in rows if r["kind"] == "peak"}
    costs = {r["width"]: r for r in rows if r["kind"] == "cost"}
    skips = [r for r in rows if r["kind"] == "skipped"]
    errors = [r for r in rows if r["kind"] == "error"]
    by = {(r["width"], r["pop"], r["strategy"]): r for r in steps}
    jax_peak = peaks.get("jax_2cores", {}).get("gflops")
    lines = [
        "# Population train step speed (`benchmarks/cpu/population_speed.py`)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['date']}; {meta['machine']}; jax {meta['jax']}, jaxlib {meta['jaxlib']}, "
        f"flax {meta['flax']}, torch {meta['torch']}, python {meta['python']}.",
        "",
        f"One SGD step (momentum 0.9, lr 0.05, weight decay 5e-4) of each of P VGG11 networks "
        f"(5-way head) on its own batch of {meta['batch']} random u8 32x32x3 images. "
        "`loop`/`vmap`: `gtl_jax.population.population_map`; `loop_lax`: `loop` without the "
        "library's CPU forms (lax.conv's kernel gradient, nn.max_pool) and CPU XLA flags, as "
        "the library ran before them; `unroll`: members traced in one "
        "jit; `single`: Python loop of P single jitted steps (baseline a; the library's "
        "layers and flags); `torch`: PyTorch "
        "CPU loop of P networks (baseline b); `procs2`: two processes pinned to one core each, "
        "each the library loop over P/2 members; `torch_procs2`: the same two pinned "
        "processes with PyTorch, one thread each. images/s: median of timed repeats. "
        "GFLOP/s: XLA cost-analysis FLOPs per image of the single-network step x images/s; "
        "% peak: of the JAX 2-core f32 matmul peak. compile s: first step minus a steady "
        "step. peak MiB: ru_maxrss of the measuring process(es), runtime included.",
        "",
        "Matmul peaks (f32 2048x2048, best of "
        f"{meta['peak_reps']}): "
        + ", ".join(f"{k} {_fmt(v['gflops'])} GFLOP/s" for k, v in peaks.items())
        + ".",
        "",
    ]
    for w, c in sorted(costs.items()):
        lines.append(
            f"- width {w:g}: {c['jax_params']:,} parameters; XLA "
            f"{c['xla_flops_per_image'] / 1e9:.4g} GFLOP per image (analytic convs + head "
            f"x 3: {c['analytic_train_flops_per_image'] / 1e9:.4g}); library default strategy "
            f"`{c['default_strategy']}`"
            + (
                f"; torch model check passed (logits max abs diff "
                f"{c['torch_check']['logits_train_max_abs_diff']:.1e})"
                if "torch_check" in c
                else ""
            )
        )
    lines += [
        "",
        "| width | P | strategy | images/s | / single | / torch | GFLOP/s | % peak | compile s | peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(
        steps,
        key=lambda r: (r["width"], r["pop"], STRATEGIES.index(r["strategy"])),
    ):
        ref_single = by.get((r["width"], r["pop"], "single"))
        ref_torch = by.get((r["width"], r["pop"], "torch"))
        ips = r["images_per_s"]
        flops = costs.get(r["width"], {}).get("xla_flops_per_image")
        gflops = flops * ips / 1e9 if flops else None
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{r['width']:g}",
                    f"{r['pop']}*" if r.get("light") else str(r["pop"]),
                    r["strategy"],
                    _fmt(ips),
                    _fmt(ips / ref_single["images_per_s"], 2) if ref_single else "-",
                    _fmt(ips / ref_torch["images_per_s"], 2) if ref_torch else "-",
                    _fmt(gflops),
                    _fmt(100 * gflops / jax_peak, 0) if gflops and jax_peak else "-",
                    _fmt(r["compile_s"], 1),
                    _fmt(r["peak_mib"], 0),
                ]
            )
            + " |"
        )
    lines += _summary(by, costs, jax_peak)
    if any(r.get("light") for r in steps):
        lines += [
            "",
            "*: measured for compile time only (`--compile-pops`): first step and one timed "
            "step, so its images/s is a single noisy sample.",
        ]
    if skips:
        lines += ["", "Skipped:", ""]
        lines += [
            f"- width {r['width']:g}, P={r['pop']}, {r['strategy']}: {r['reason']}"
            for r in skips
        ]
    if errors:
        lines += ["", "Failed:", ""]
        lines += [
            f"- width {r['width']:g}, P={r['pop']}, {r['strategy']}: {r['error'][:300]}"
            for r in errors
        ]
    lines += ["", f"Total wall time of the run: {meta['total_s'] / 60:.1f} min."]
    path.write_text("\n".join(lines) + "\n")


def _summary(by: dict, costs: dict, jax_peak: float | None) -> list[str]:
    """The issue's headline numbers: P=8 ratios, full-width share of peak, compile P=16 vs 2."""
    lines = []
    for w, c in sorted(costs.items()):
        default = c["default_strategy"]
        for p in (8,):
            r = by.get((w, p, default))
            if not r:
                continue
            ips = r["images_per_s"]
            parts = [f"{ips:,.1f} images/s"]
            for base in (
                "loop_lax",
                "single",
                "torch",
                "unroll",
                "vmap",
                "procs2",
                "torch_procs2",
            ):
                b = by.get((w, p, base))
                if b:
                    parts.append(f"{ips / b['images_per_s']:.2f}x {base}")
            if jax_peak:
                share = c["xla_flops_per_image"] * ips / 1e9 / jax_peak
                parts.append(f"{100 * share:.0f}% of the matmul peak")
            lines.append(f"- width {w:g}, P={p}, `{default}`: " + ", ".join(parts))
        for s in (default, "unroll"):
            a, b = by.get((w, 2, s)), by.get((w, 16, s))
            if a and b:
                lines.append(
                    f"- width {w:g}, `{s}`: compile {b['compile_s']:.1f} s at P=16 vs "
                    f"{a['compile_s']:.1f} s at P=2 (first step {b['first_call_s']:.1f} s "
                    f"vs {a['first_call_s']:.1f} s)"
                )
    if lines:
        lines = [
            "",
            "Summary (the library default strategy on this backend):",
            "",
            *lines,
        ]
    return lines


def write_plot(path: pathlib.Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["kind"] == "step" and not r.get("light")]
    widths = sorted({r["width"] for r in steps})
    if not widths:
        return
    fig, axes = plt.subplots(
        1, len(widths), figsize=(5.5 * len(widths), 4.2), squeeze=False
    )
    for ax, w in zip(axes[0], widths):
        for name in STRATEGIES:
            pts = sorted(
                (r["pop"], r["images_per_s"])
                for r in steps
                if r["width"] == w and r["strategy"] == name
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        pops = sorted({r["pop"] for r in steps if r["width"] == w})
        ax.set_xscale("log", base=2)
        ax.set_xticks(pops, [str(p) for p in pops])
        ax.set_xlabel("population size P")
        ax.set_ylabel("images/s (all members)")
        ax.set_title(f"VGG11 width {w:g}, 32x32, batch {steps[0]['batch']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", default="0.25,1.0")
    parser.add_argument("--pops", default="1,4,8,16")
    parser.add_argument(
        "--compile-pops",
        default="2",
        help="extra P measured for compile time only (first step + one timed step) by "
        "the strategies whose program depends on P (loop, vmap, unroll)",
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=12.0)
    parser.add_argument("--min-repeats", type=int, default=2)
    parser.add_argument("--max-repeats", type=int, default=5)
    parser.add_argument("--min-repeat-s", type=float, default=0.5)
    parser.add_argument("--max-step-s", type=float, default=12.0)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument(
        "--torch-format", choices=("channels_last", "nchw"), default="channels_last"
    )
    parser.add_argument("--peak-reps", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="validation: width 0.0625, P 1,2, one repeat (overrides those flags)",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--peak-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cost-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.peak_worker:
        return peak_worker(json.loads(args.peak_worker))
    if args.cost_worker:
        return cost_worker(json.loads(args.cost_worker))

    if args.quick:
        args.widths, args.pops = "0.0625", "1,2"
        args.min_repeats = args.max_repeats = 1
        args.budget_s, args.peak_reps = 1.0, 5
    widths = [float(w) for w in args.widths.split(",")]
    pops = sorted(int(p) for p in args.pops.split(","))
    compile_pops = sorted(int(p) for p in args.compile_pops.split(",") if p)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {STRATEGIES}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "population_speed.jsonl"
    command = "python benchmarks/cpu/population_speed.py" + "".join(
        " " + shlex.quote(a) for a in sys.argv[1:]
    )
    cores = sorted(os.sched_getaffinity(0))
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {len(cores)} cores available",
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "torch": _version("torch"),
        "batch": args.batch,
        "peak_reps": args.peak_reps,
    }
    has_torch = meta["torch"] is not None
    common = {
        "batch": args.batch,
        "classes": args.classes,
        "seed": 0,
        "budget_s": args.budget_s,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "min_repeat_s": args.min_repeat_s,
        "torch_threads": args.torch_threads,
        "torch_format": args.torch_format,
    }
    rows: list[dict] = []
    started = time.perf_counter()
    with jsonl.open("w") as f:

        def emit(row: dict) -> None:
            row = {
                **row,
                "jax": meta["jax"],
                "jaxlib": meta["jaxlib"],
                "torch": meta["torch"],
                "command": command,
            }
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            brief = {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in row.items()
                if k not in ("command", "step_s_all", "torch_check")
            }
            print(json.dumps(brief), flush=True)

        peak_jobs = [("jax_2cores", {"lib": "jax"})]
        if len(cores) >= 2:
            peak_jobs.append(("jax_1core", {"lib": "jax", "core": cores[0]}))
        if has_torch and any(s in strategies for s in TORCH_STRATEGIES):
            peak_jobs.append(("torch_2threads", {"lib": "torch"}))
        for name, job in peak_jobs:
            spec = {
                **job,
                "n": 2048,
                "reps": args.peak_reps,
                "torch_threads": args.torch_threads,
            }
            res = _run_json(_python(["--peak-worker"], spec), args.timeout_s)
            emit({"kind": "peak", "name": name, **res})

        for width in widths:
            spec = {
                "width": width,
                "batch": args.batch,
                "classes": args.classes,
                "torch_check": has_torch and "torch" in strategies,
            }
            emit(
                {
                    "kind": "cost",
                    **_run_json(_python(["--cost-worker"], spec), args.timeout_s),
                }
            )
            for strategy in strategies:
                last_rate = None
                light_pops = (
                    [p for p in compile_pops if p not in pops]
                    if strategy in COMPILE_STRATEGIES
                    else []
                )
                for pop in sorted(pops + light_pops):
                    light = pop in light_pops
                    where = {"width": width, "pop": pop, "strategy": strategy}
                    reason = None
                    if strategy in TORCH_STRATEGIES and not has_torch:
                        reason = "torch is not installed (pip install -e '.[bench]')"
                    elif strategy in PROCS2_STRATEGIES and (pop % 2 or len(cores) < 2):
                        reason = "needs an even P and 2 cores"
                    elif last_rate and pop * args.batch / last_rate > args.max_step_s:
                        reason = (
                            f"predicted {pop * args.batch / last_rate:.1f} s per step "
                            f"(from {last_rate:.1f} images/s at the previous P) > "
                            f"--max-step-s {args.max_step_s:g}"
                        )
                    if reason:
                        emit({"kind": "skipped", **where, "reason": reason})
                        continue
                    spec = {**common, **where, "members": pop}
                    if light:  # compile time only: the first step and one timed step
                        spec.update(
                            budget_s=0.0, min_repeats=1, max_repeats=1, min_repeat_s=0.0
                        )
                    t0 = time.perf_counter()
                    try:
                        if strategy in PROCS2_STRATEGIES:
                            res = run_procs2(spec, cores, args.timeout_s)
                        else:
                            res = _run_json(_python(["--worker"], spec), args.timeout_s)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        emit({"kind": "error", **where, "error": str(e)})
                        continue
                    last_rate = res["images_per_s"]
                    emit(
                        {
                            "kind": "step",
                            **where,
                            "light": light,
                            "batch": args.batch,
                            "classes": args.classes,
                            **res,
                            "wall_s": time.perf_counter() - t0,
                        }
                    )
    meta["total_s"] = time.perf_counter() - started
    write_markdown(out / "population_speed.md", rows, meta)
    write_plot(out / "population_speed.png", rows)
    print(
        f"wrote {jsonl}, population_speed.md, population_speed.png in {out} "
        f"({meta['total_s']:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    main()
