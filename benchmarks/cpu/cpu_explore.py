"""What makes a VGG11 train step faster on XLA CPU: conv forms, max-pool, XLA flags, bfloat16.

Run it alone (the cores are shared; about 10 minutes on 2 lightly loaded cores):

    python benchmarks/cpu/cpu_explore.py          # writes benchmarks/cpu/results/cpu_explore.{jsonl,md}
    python benchmarks/cpu/cpu_explore.py --quick --out /tmp/cpu_explore  # about 5 minutes
    python benchmarks/cpu/cpu_explore.py --only flags --flags all  # every flag set (~15 minutes)
    # the flags against the library with its CPU forms on (results/cpu_explore_flags_cpu_forms):
    python benchmarks/cpu/cpu_explore.py --only flags --flags-step cpu_forms --name cpu_explore_flags_cpu_forms \
        --flags no_concurrency_scheduler,ynn_fusion_dot_eltwise_reduce,no_concurrency_scheduler+ynn_fusion

Sections (``--only conv,step,flags``; ``conv`` includes the max-pool rows), all on VGG11
(``build_model("vgg11", 5, width=w)``), w in ``--widths`` (default 0.25 and 1), 32x32x3
images, batch 64:

- ``conv``: forward + backward (kernel gradient, and input gradient except for the first
  layer, as in training) of one 3x3 'SAME' conv at each VGG11 layer's (H, W, Cin, Cout), in
  five forms: ``nhwc`` (``lax.conv_general_dilated`` NHWC/HWIO; the baseline), ``nchw`` (the
  same conv on NCHW activations), ``im2col`` (the 9 shifted input windows concatenated along
  channels, then one matmul), ``shifted`` (9 shifted matmuls summed,
  ``layers.shifted_matmul_conv``, the library's form on 2x2 and 1x1 maps) and ``matmul_dk``
  (lax.conv forward and input gradient, kernel gradient as 9 matmuls,
  ``layers.conv_matmul_kernel_grad``, the library's CPU form on larger maps). Each is checked
  against ``nhwc`` first (``max_rel_err``).
- ``pool``: 2x2 max-pool forward + backward at each VGG11 pool's input, ``nn.max_pool``
  (reduce_window; its gradient is select-and-scatter) against the reshaped max
  (``layers.max_pool_2x2``), and whether their gradients are equal.
- ``step``: one SGD step (``gtl_jax.population.train_step``, ``make_optimizer("sgd", 0.05)``)
  of the library's network as it is (``f32``, the baseline) against variants
  (``STEP_VARIANTS``) that set the CPU forms of ``gtl_jax.models.layers`` explicitly, whatever
  the library's defaults are: ``cpu_forms`` (kernel gradient as matmuls and reshaped
  max-pool), ``matmul_dk`` and ``reshape_pool`` (one of the two), ``lax_forms`` (neither:
  lax.conv's kernel gradient and nn.max_pool); ``im2col_all`` (every 3x3 conv as im2col),
  ``bf16`` (``dtype=jnp.bfloat16``: bfloat16 convs and activations, float32 parameters);
  ``--steps all`` adds ``im2col_small`` (im2col instead of shifted matmuls on 2x2 maps),
  ``shifted_all`` (shifted matmuls on every map) and ``xla_forms`` (the model's
  ``forms="xla"``: lax.conv and nn.max_pool everywhere, small maps included).
- ``flags``: the same step (library as it is), in a fresh subprocess per run: no flags
  (``baseline``), each set of ``XLA_FLAGS`` of ``--flags`` (``DEFAULT_FLAG_SETS``; ``all``:
  ``FLAG_SETS``), and ``1core`` (the baseline pinned to one core with ``taskset -c 0``, so XLA's
  thread pool has one thread). ``same numbers``: the step's outputs are bit-identical to the
  baseline's (a digest of their bytes). A flag this jaxlib does not know aborts its
  subprocess; that is recorded, not fatal. The subprocesses share a compilation cache private
  to the run (XLA_FLAGS are part of JAX's cache key), so repeated runs of one flag set skip
  compilation (their ``compile_s`` is a cache load).

Noise: the cores are shared with other jobs, so variants are interleaved (in-process: rounds
A, B, C, A, B, C, ...; subprocesses: a baseline between every two variants) and each is
compared with the baseline measured next to it: ratio = variant speed / baseline speed (median
over rounds, with the per-round [min, max]; for subprocesses, per run over the mean of the
adjacent baselines). ``spread`` is the baseline's (max - min) / median. A flag set whose ratio
is above 1.10 or below 0.90 at some width is run again (``--confirm`` more interleaved
pairs, for the ``--confirm-top`` that moved most). Each row records the 1-minute load
average (``loadavg_1m``) when it was written: above 2 (two cores), other jobs competed and
every number is lower and noisier. The summary calls a change "helped" when its median ratio
is above 1.10 and every round (every run) is above 1, "hurt" for the mirror image, else "no
clear effect".

Steady state: compiled and warmed up first; each timing runs k calls (k calibrated so one
timing lasts about ``--timing-s``) and ends on ``block_until_ready``. Network starting values
are drawn with numpy at the library init's shapes (the same in every variant and process).
FLOPs: per conv, analytic (2 x multiply-adds of the forward, input gradient and kernel
gradient); per step, XLA's cost analysis of the compiled step. ``% peak`` is over the matmul
peak measured at the start of the run (best of ``jnp.dot`` of two f32 2048x2048 matrices).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax.models import build_model, layers
from gtl_jax.models.layers import conv_matmul_kernel_grad, shifted_matmul_conv
from gtl_jax.population import init_network, make_optimizer, train_step

BATCH = 64
IMAGE = 32
# VGG11 at 32x32: (map side, input channels, output channels) of each conv at width 1.
VGG11_LAYERS = (
    ("stage1/conv1", 32, 3, 64),
    ("stage2/conv1", 16, 64, 128),
    ("stage3/conv1", 8, 128, 256),
    ("stage3/conv2", 8, 256, 256),
    ("stage4/conv1", 4, 256, 512),
    ("stage4/conv2", 4, 512, 512),
    ("stage5/conv1", 2, 512, 512),
    ("stage5/conv2", 2, 512, 512),
)
# XLA_FLAGS variants; the names of flags this jaxlib (0.10.2) registers come from
# `strings libjax_common.so | grep xla_cpu_`. Not tried: xla_cpu_use_thunk_runtime (its
# setter ignores the value in this XLA: "no longer supported"), xla_cpu_use_acl (ARM only),
# xla_cpu_prefer_vector_width=512 and xla_cpu_max_isa (this CPU has AVX2, no AVX-512).
FLAG_SETS = {
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "xnn_fusion_dot_eltwise_reduce": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "xnn_graph_fusion_greedy": (
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
    ),
    "ynn_fusion_dot_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusion_dot_eltwise": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
    "no_concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "no_concurrency_scheduler+ynn_fusion": (
        "--xla_cpu_enable_concurrency_optimized_scheduler=false "
        "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
    ),
}
# The default run screens these (about 10 minutes in all); ``--flags all`` screens every set.
DEFAULT_FLAG_SETS = (
    "no_concurrency_scheduler",
    "fast_math",
    "no_xnnpack",
    "xnn_graph_fusion_greedy",
    "ynn_fusion_dot_eltwise_reduce",
    "onednn",
)
QUICK_FLAG_SETS = ("no_concurrency_scheduler", "fast_math")


# --------------------------------------------------------------------------- timing


def calibrate(fn: Callable[[], object], timing_s: float) -> int:
    """Calls per timing so that one timing lasts about ``timing_s`` (fn is warmed up here)."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    jax.block_until_ready(fn())
    once = time.perf_counter() - start
    return max(1, int(round(timing_s / max(once, 1e-6))))


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, timing_s: float
) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round; rounds run A, B, C, A, B, C, ..."""
    calls = {name: calibrate(fn, timing_s) for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(seconds_per_call(fn, calls[name]))
    return times


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def matmul_peak_gflops(repeats: int = 10) -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    best = min(seconds_per_call(lambda: dot(a, a), 2) for _ in range(repeats))
    return 2 * 2048**3 / best / 1e9


# --------------------------------------------------------------------------- conv section


def conv_nhwc(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_nchw(x, kernel):
    """The same conv on NCHW activations (the kernel keeps the library's HWIO layout)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW")
    )


def conv_im2col(x, kernel):
    """Patches f32[B, H, W, kh*kw*I] (taps outer, channels inner), then one matmul."""
    kh, kw, ci, co = kernel.shape
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1
    )
    return jnp.einsum("bhwp,po->bhwo", patches, kernel.reshape(kh * kw * ci, co))


FORMULATIONS = {
    "nhwc": conv_nhwc,
    "nchw": conv_nchw,
    "im2col": conv_im2col,
    "shifted": shifted_matmul_conv,
    "matmul_dk": conv_matmul_kernel_grad,
}


def conv_grad_fn(conv, input_grad: bool):
    def loss(x, kernel, cotangent):
        return jnp.vdot(conv(x, kernel), cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1) if input_grad else 1))


# VGG11 at 32x32: (map side, channels at width 1) of the input of each 2x2 max-pool.
VGG11_POOLS = ((32, 64), (16, 128), (8, 256), (4, 512))


def pool_section(args, emit) -> None:
    """2x2 max-pool forward + backward: nn.max_pool (reduce_window) against the reshaped max."""
    forms = {"reduce_window": "xla", "reshape": "cpu"}
    for width in args.widths:
        for side, channels in VGG11_POOLS:
            channels = max(1, round(channels * width))
            kx, kc = jax.random.split(jax.random.key(side))
            x = jax.random.normal(kx, (BATCH, side, side, channels))  # no ties
            cotangent = jax.random.normal(kc, (BATCH, side // 2, side // 2, channels))
            variants = {}
            for name, form in forms.items():

                def loss(x, cotangent, form=form):
                    return jnp.vdot(layers.max_pool_2x2(x, form), cotangent)

                fn = jax.jit(jax.grad(loss))
                variants[name] = lambda fn=fn, x=x, c=cotangent: fn(x, c)
            same = bool(jnp.all(variants["reshape"]() == variants["reduce_window"]()))
            times = interleaved(variants, args.rounds, args.timing_s)
            base = statistics.median(times["reduce_window"])
            for name, ts in times.items():
                emit(
                    {
                        "section": "pool",
                        "width": width,
                        "shape": f"{side}x{side}x{channels}",
                        "form": name,
                        "ms": round(1e3 * statistics.median(ts), 3),
                        "speedup_vs_reduce_window": round(
                            base / statistics.median(ts), 3
                        ),
                        "ratio_range": [
                            round(
                                min(b / t for b, t in zip(times["reduce_window"], ts)),
                                3,
                            ),
                            round(
                                max(b / t for b, t in zip(times["reduce_window"], ts)),
                                3,
                            ),
                        ],
                        "same_gradient": same,
                        "rounds": args.rounds,
                    }
                )


def conv_section(args, peak: float, emit) -> None:
    for width in args.widths:
        for index, (layer, side, cin, cout) in enumerate(VGG11_LAYERS):
            cin = cin if index == 0 else max(1, round(cin * width))
            cout = max(1, round(cout * width))
            kx, kk, kc = jax.random.split(jax.random.key(index), 3)
            x = jax.random.normal(kx, (BATCH, side, side, cin))
            kernel = jax.random.normal(kk, (3, 3, cin, cout)) / np.sqrt(9 * cin)
            cotangent = jax.random.normal(kc, (BATCH, side, side, cout))
            expected = conv_nhwc(x, kernel)
            variants, errors = {}, {}
            for name, conv in FORMULATIONS.items():
                nchw = name == "nchw"
                xi, ci = (x, cotangent)
                if nchw:
                    xi, ci = xi.transpose(0, 3, 1, 2), ci.transpose(0, 3, 1, 2)
                out = conv(xi, kernel)
                out = out.transpose(0, 2, 3, 1) if nchw else out
                errors[name] = float(
                    jnp.max(jnp.abs(out - expected)) / jnp.max(jnp.abs(expected))
                )
                fn = conv_grad_fn(conv, input_grad=index > 0)
                variants[name] = lambda fn=fn, xi=xi, k=kernel, ci=ci: fn(xi, k, ci)
            times = interleaved(variants, args.rounds, args.timing_s)
            macs = BATCH * side * side * 9 * cin * cout
            flops = 2 * macs * (3 if index > 0 else 2)
            base = statistics.median(times["nhwc"])
            for name, ts in times.items():
                seconds = statistics.median(ts)
                emit(
                    {
                        "section": "conv",
                        "width": width,
                        "layer": layer,
                        "shape": f"{side}x{side}x{cin}->{cout}",
                        "formulation": name,
                        "ms": round(1e3 * seconds, 3),
                        "gflops": round(flops / seconds / 1e9, 1),
                        "pct_peak": round(100 * flops / seconds / 1e9 / peak, 1),
                        "speedup_vs_nhwc": round(base / seconds, 3),
                        "ratio_range": [
                            round(min(b / t for b, t in zip(times["nhwc"], ts)), 3),
                            round(max(b / t for b, t in zip(times["nhwc"], ts)), 3),
                        ],
                        "spread": round(spread(ts), 3),
                        "max_rel_err": float(f"{errors[name]:.2g}"),
                        "rounds": args.rounds,
                    }
                )


# --------------------------------------------------------------------------- step section


def compile_step(width: float, patches: dict | None = None, **model_kwargs):
    """A VGG11 train step at ``width``, compiled: (compiled, its arguments, compile seconds).

    ``patches``: attributes of ``gtl_jax.models.layers`` replaced while tracing (a conv form).
    """
    model = build_model(
        "vgg11", 5, width=width, dtype=model_kwargs.pop("dtype", jnp.float32)
    )
    if model_kwargs:
        model = model.clone(**model_kwargs)
    tx = make_optimizer("sgd", 0.05)
    # Starting values drawn with numpy at the shapes of the library's init: the same for every
    # variant and process, and no init to compile (values do not change a step's cost).
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(
        lambda: init_network(model, tx, jax.random.key(0), (IMAGE, IMAGE, 3))
    )
    state = jax.tree.map(
        lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes
    )
    x = jnp.asarray(rng.integers(0, 256, (BATCH, IMAGE, IMAGE, 3), np.uint8))
    y = jnp.asarray(rng.integers(0, 5, BATCH), jnp.int32)
    step = jax.jit(lambda state, x, y: train_step(model, tx, state, x, y))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for name, value in (patches or {}).items():
            stack.enter_context(mock.patch.object(layers, name, value))
        compiled = step.lower(state, x, y).compile()
    return compiled, (state, x, y), time.perf_counter() - start


def step_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def step_setup(width: float, patches: dict | None = None, **model_kwargs):
    """A compiled VGG11 train step at ``width``: (call, flops per step, compile seconds)."""
    compiled, args, compile_s = compile_step(width, patches, **model_kwargs)
    return (lambda: compiled(*args)), step_flops(compiled), compile_s


def checksum(tree) -> str:
    """A digest of the arrays' bytes: equal digests, bit-identical results."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:12]


def _forms(matmul_dk: bool, reshape_pool: bool) -> dict:
    """The CPU forms (the model's default on CPU) with the kernel gradient as matmuls and the
    reshaped max-pool each kept or replaced by XLA's own (lax.conv's kernel gradient,
    nn.max_pool): ``gtl_jax.models.layers`` looks both up when the model is traced."""
    patches = {}
    if not matmul_dk:
        patches["conv_matmul_kernel_grad"] = layers.lax_conv
    if not reshape_pool:
        patches["reshaped_max_pool_2x2"] = layers.xla_max_pool_2x2
    return {"forms": "cpu", "patches": patches}


# Variants of the library's network; each sets the CPU forms of gtl_jax.models.layers it
# names and keeps the library's defaults for the others (shifted matmuls on maps <= 2x2).
STEP_VARIANTS = {
    "f32": {},  # the library's model and CPU rules, as they are (the baseline)
    "cpu_forms": _forms(True, True),  # kernel gradient as matmuls + reshaped max-pool
    "matmul_dk": _forms(True, False),
    "reshape_pool": _forms(False, True),
    "lax_forms": _forms(False, False),  # lax.conv's kernel gradient + nn.max_pool
    "im2col_small": {"patches": {"shifted_matmul_conv": conv_im2col}},
    "im2col_all": {
        "small_map_pixels": 10**9,
        "patches": {"shifted_matmul_conv": conv_im2col},
    },
    "shifted_all": {"small_map_pixels": 10**9},
    "xla_forms": {"forms": "xla"},  # lax.conv and nn.max_pool everywhere, as on GPU/TPU
    "bf16": {"dtype": jnp.bfloat16},
}
DEFAULT_STEP_VARIANTS = (
    "f32",
    "cpu_forms",
    "matmul_dk",
    "reshape_pool",
    "lax_forms",
    "im2col_all",
    "bf16",
)
QUICK_STEP_VARIANTS = ("f32", "cpu_forms", "bf16")


def step_section(args, peak: float, emit) -> None:
    for width in args.widths:
        variants, flops, compile_s = {}, {}, {}
        names = args.step_variants
        for name in names:
            kwargs = dict(STEP_VARIANTS[name])
            variants[name], flops[name], compile_s[name] = step_setup(width, **kwargs)
        times = interleaved(variants, args.rounds, args.timing_s)
        base = statistics.median(times["f32"])
        for name, ts in times.items():
            seconds = statistics.median(ts)
            emit(
                {
                    "section": "step",
                    "width": width,
                    "variant": name,
                    "images_per_s": round(BATCH / seconds, 1),
                    "pct_peak": round(100 * flops["f32"] / seconds / 1e9 / peak, 1),
                    "speedup_vs_f32": round(base / seconds, 3),
                    "ratio_range": [
                        round(min(b / t for b, t in zip(times["f32"], ts)), 3),
                        round(max(b / t for b, t in zip(times["f32"], ts)), 3),
                    ],
                    "spread": round(spread(ts), 3),
                    "compile_s": round(compile_s[name], 1),
                    "rounds": args.rounds,
                }
            )


# --------------------------------------------------------------------------- flags section


def worker(args) -> None:
    """One subprocess of the flags section: images/s of the f32 step at each width."""
    # A cache private to this run: the baseline compiles once; XLA_FLAGS are part of JAX's
    # cache key, so every flag set compiles its own program.
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    result = {}
    for width in args.widths:
        call, flops, compile_s = step_setup(width, **STEP_VARIANTS[args.flags_step])
        calls = calibrate(call, args.timing_s)
        times = [seconds_per_call(call, calls) for _ in range(args.worker_timings)]
        seconds = statistics.median(times)
        result[str(width)] = {
            "images_per_s": round(BATCH / seconds, 1),
            "gflops": round(flops / seconds / 1e9, 1),
            "compile_s": round(compile_s, 1),
            "checksum": checksum(call()),
        }
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(args, name: str) -> dict:
    env = dict(os.environ)
    flags = FLAG_SETS.get(name, "")
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    command = [sys.executable, __file__, "--worker", "--timing-s", str(args.timing_s)]
    command += ["--widths", ",".join(str(w) for w in args.widths)]
    command += ["--worker-timings", str(args.worker_timings)]
    command += ["--cache-dir", args.cache_dir, "--flags-step", args.flags_step]
    if name == "1core":
        command = ["taskset", "-c", "0"] + command
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:300]}", "wall_s": elapsed}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["wall_s"] = round(elapsed, 1)
    warnings = [line for line in out.stderr.splitlines() if "flag" in line.lower()]
    if warnings:
        result["stderr_flag_lines"] = [w[-200:] for w in warnings[:3]]
    return result


def flags_section(args, emit) -> None:
    names = list(args.flag_sets) + ["1core"]
    runs: list[tuple[str, dict]] = []

    def run(name):
        result = run_worker(args, name)
        runs.append((name, result))
        print(f"  flags: {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        return result

    # Screen: baseline, v1, v2, baseline, v3, v4, baseline, ...
    run("baseline")
    for i in range(0, len(names), 2):
        for name in names[i : i + 2]:
            run(name)
        run("baseline")
    # Confirm: more interleaved pairs for the (at most --confirm-top) variants that moved most,
    # if by more than 10%.
    moved = {
        name: max(abs(statistics.median(r) - 1) for r in per_width.values() if r)
        for name, per_width in flag_ratios(runs, args.widths).items()
        if name != "baseline" and any(per_width.values())
    }
    moved = sorted((n for n in moved if moved[n] > 0.10), key=moved.get, reverse=True)
    for name in moved[: args.confirm_top]:
        for _ in range(args.confirm):
            run(name)
            run("baseline")
    ratios = flag_ratios(runs, args.widths)
    baselines = [r for n, r in runs if n == "baseline" and "error" not in r]
    for name in ["baseline"] + names:
        results = [r for n, r in runs if n == name]
        ok = [r for r in results if "error" not in r]
        for width in args.widths:
            key = str(width)
            rates = [r[key]["images_per_s"] for r in ok]
            base_sums = {b[key]["checksum"] for b in baselines}
            mine = ratios.get(name, {}).get(key, [])
            emit(
                {
                    "section": "flags",
                    "variant": name,
                    "xla_flags": FLAG_SETS.get(name, ""),
                    "launcher": "taskset -c 0" if name == "1core" else "",
                    "step": args.flags_step,
                    "width": width,
                    "images_per_s": rates,
                    "median_images_per_s": statistics.median(rates) if rates else None,
                    "ratios": [round(x, 3) for x in mine],
                    "ratio_vs_adjacent_baseline": (
                        round(statistics.median(mine), 3) if mine else None
                    ),
                    "baseline_spread": round(
                        spread([b[key]["images_per_s"] for b in baselines]), 3
                    ),
                    "same_numbers_as_baseline": bool(ok)
                    and all(r[key]["checksum"] in base_sums for r in ok),
                    "compile_s": [r[key]["compile_s"] for r in ok],
                    "error": next((r["error"] for r in results if "error" in r), None),
                }
            )


def flag_ratios(
    runs: list[tuple[str, dict]], widths
) -> dict[str, dict[str, list[float]]]:
    """Per run: images/s over the mean of the nearest baseline before and after it."""
    per_name: dict[str, dict[str, list[float]]] = {}
    base_index = [
        i for i, (n, r) in enumerate(runs) if n == "baseline" and "error" not in r
    ]
    for i, (name, result) in enumerate(runs):
        for width in widths:
            key = str(width)
            ratios = per_name.setdefault(name, {}).setdefault(key, [])
            if "error" in result:
                continue
            before = [j for j in base_index if j < i]
            after = [j for j in base_index if j > i]
            near = ([before[-1]] if before else []) + ([after[0]] if after else [])
            if not near:
                continue
            base = statistics.mean(runs[j][1][key]["images_per_s"] for j in near)
            ratios.append(result[key]["images_per_s"] / base)
    return per_name


# --------------------------------------------------------------------------- main


def environment() -> dict:
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "process_xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and flag sets"
    )
    parser.add_argument("--only", default="conv,step,flags")
    parser.add_argument("--widths", default="0.25,1.0")
    parser.add_argument("--rounds", type=int, default=None, help="default 3")
    parser.add_argument(
        "--timing-s", type=float, default=None, help="default 0.4 (quick 0.25)"
    )
    parser.add_argument("--confirm", type=int, default=2)
    parser.add_argument("--confirm-top", type=int, default=3)
    parser.add_argument(
        "--steps",
        default=None,
        help="all: every step variant of STEP_VARIANTS (default: DEFAULT_STEP_VARIANTS)",
    )
    parser.add_argument(
        "--flags",
        default=None,
        help="flag sets to screen: all, or comma-separated names of FLAG_SETS "
        "(default: DEFAULT_FLAG_SETS; quick: QUICK_FLAG_SETS)",
    )
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    parser.add_argument(
        "--name", default="cpu_explore", help="output files NAME.{jsonl,md}"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-timings", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--flags-step",
        default="f32",
        choices=sorted(STEP_VARIANTS),
        help="the step variant every run of the flags section times (default: the library "
        "as it is)",
    )
    args = parser.parse_args(argv)
    args.widths = [float(w) for w in args.widths.split(",")]
    args.rounds = args.rounds or 3
    args.timing_s = args.timing_s or (0.2 if args.quick else 0.3)
    if args.flags == "all":
        args.flag_sets = tuple(FLAG_SETS)
    elif args.flags:
        args.flag_sets = tuple(args.flags.split(","))
        unknown = set(args.flag_sets) - set(FLAG_SETS)
        if unknown:
            parser.error(
                f"unknown flag sets {sorted(unknown)}; known: {list(FLAG_SETS)}"
            )
    else:
        args.flag_sets = QUICK_FLAG_SETS if args.quick else DEFAULT_FLAG_SETS
    if args.steps == "all":
        args.step_variants = tuple(STEP_VARIANTS)
    else:
        args.step_variants = (
            QUICK_STEP_VARIANTS if args.quick else DEFAULT_STEP_VARIANTS
        )
    if args.worker:
        worker(args)
        return

    command = "python benchmarks/cpu/cpu_explore.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{args.name}.jsonl"
    env = environment()
    rows: list[dict] = []
    started = time.perf_counter()
    with open(jsonl, "w") as f:

        def emit(row: dict) -> None:
            row = {"benchmark": "cpu_explore", **env, **row, "command": command.strip()}
            # The 1-minute load average when the row was written: other jobs on the cores.
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)

        peak = matmul_peak_gflops()
        emit({"section": "peak", "matmul_gflops": round(peak, 1)})
        sections = args.only.split(",")
        if "conv" in sections:
            conv_section(args, peak, emit)
            pool_section(args, emit)
        if "step" in sections:
            step_section(args, peak, emit)
        if "flags" in sections:
            with tempfile.TemporaryDirectory() as cache_dir:
                args.cache_dir = cache_dir
                flags_section(args, emit)
        emit({"section": "total", "wall_s": round(time.perf_counter() - started, 1)})
    md = out / f"{args.name}.md"
    # Text above the marker (a hand-written reading of the results) survives a rerun.
    kept = (
        md.read_text().split(MARKER)[0]
        if md.exists() and MARKER in md.read_text()
        else ""
    )
    md.write_text(kept + MARKER + "\n\n" + markdown(rows, command.strip()))


MARKER = "<!-- Generated by benchmarks/cpu/cpu_explore.py: everything below is rewritten. -->"


def classify(ratio: float, low: float, high: float) -> str:
    """'helped' (> 1.10 and every round > 1), 'hurt' (< 0.90 and every round < 1), else noise."""
    if ratio > 1.10 and low > 1:
        return "helped"
    if ratio < 0.90 and high < 1:
        return "hurt"
    return "no clear effect"


def summary(rows: list[dict]) -> list[str]:
    """What helped and what did not, by the rule of ``classify`` (ratios to the baseline)."""
    lines = ["### Summary (generated from this run's ratios)", ""]
    step = [r for r in rows if r["section"] == "step" and r["variant"] != "f32"]
    for variant in dict.fromkeys(r["variant"] for r in step):
        cells = []
        for r in (r for r in step if r["variant"] == variant):
            lo, hi = r["ratio_range"]
            cells.append(
                f"w={r['width']:g}: x{r['speedup_vs_f32']:.2f} [{lo:.2f}, {hi:.2f}] "
                f"({classify(r['speedup_vs_f32'], lo, hi)})"
            )
        lines.append(
            f"- step, `{variant}` vs the library as it is: " + "; ".join(cells)
        )
    conv = [r for r in rows if r["section"] == "conv" and r["formulation"] != "nhwc"]
    for form in dict.fromkeys(r["formulation"] for r in conv):
        verdicts: dict[str, list[str]] = {}
        for r in (r for r in conv if r["formulation"] == form):
            verdict = classify(r["speedup_vs_nhwc"], *r["ratio_range"])
            verdicts.setdefault(verdict, []).append(
                f"{r['shape']} x{r['speedup_vs_nhwc']:.2f}"
            )
        lines.append(
            f"- conv `{form}` vs nhwc: "
            + "; ".join(f"{v}: {', '.join(s)}" for v, s in sorted(verdicts.items()))
        )
    pool = [r for r in rows if r["section"] == "pool" and r["form"] == "reshape"]
    if pool:
        lines.append(
            "- max-pool, reshaped max vs nn.max_pool (forward + backward): "
            + ", ".join(
                f"{r['shape']} x{r['speedup_vs_reduce_window']:.2f}" for r in pool
            )
        )
    flags = [r for r in rows if r["section"] == "flags" and r["variant"] != "baseline"]
    verdicts = {}
    for variant in dict.fromkeys(r["variant"] for r in flags):
        mine = [r for r in flags if r["variant"] == variant]
        if any(r["error"] for r in mine):
            verdicts.setdefault("failed", []).append(variant)
            continue
        text = (
            f"{variant} ("
            + ", ".join(
                f"w={r['width']:g} x{r['ratio_vs_adjacent_baseline']:.2f}"
                + ("" if r["same_numbers_as_baseline"] else ", other numbers")
                for r in mine
            )
            + ")"
        )
        per_width = [
            classify(
                r["ratio_vs_adjacent_baseline"], min(r["ratios"]), max(r["ratios"])
            )
            if len(r["ratios"]) > 1
            else "no clear effect"
            for r in mine
        ]
        if "helped" in per_width:
            verdict = "helped (every run, at least one width)"
        elif "hurt" in per_width:
            verdict = "hurt"
        else:
            verdict = "no clear effect (single runs, or within noise)"
        verdicts.setdefault(verdict, []).append(text)
    for verdict, names in verdicts.items():
        lines.append(f"- XLA flags, {verdict}: " + "; ".join(names))
    return lines + [""]


def markdown(rows: list[dict], command: str) -> str:
    """The summary and tables of the run."""
    lines = [f"Command: `{command}`", ""]
    peak = next(r["matmul_gflops"] for r in rows if r["section"] == "peak")
    lines += [
        f"Matmul peak in this run: {peak} GFLOP/s (f32 2048x2048, both cores). "
        "1-minute load average while it ran (2 cores; above 2, other jobs competed): "
        f"{min(r['loadavg_1m'] for r in rows):.1f}-"
        f"{max(r['loadavg_1m'] for r in rows):.1f}.",
        "",
    ]
    lines += summary(rows)
    conv = [r for r in rows if r["section"] == "conv"]
    if conv:
        lines += [
            "### Per conv layer, forward + backward (speedup over nhwc; median of "
            f"{conv[0]['rounds']} interleaved rounds, [min, max] per-round ratio)",
            "",
            "| width | layer | shape | nhwc ms (% peak) | nchw | im2col | shifted | matmul_dk |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key in dict.fromkeys((r["width"], r["layer"]) for r in conv):
            by = {r["formulation"]: r for r in conv if (r["width"], r["layer"]) == key}
            base = by["nhwc"]
            cells = [
                f"{by[n]['speedup_vs_nhwc']:.2f} [{by[n]['ratio_range'][0]:.2f}, "
                f"{by[n]['ratio_range'][1]:.2f}]"
                for n in ("nchw", "im2col", "shifted", "matmul_dk")
            ]
            lines.append(
                f"| {key[0]:g} | {key[1]} | {base['shape']} | {base['ms']:.2f} "
                f"({base['pct_peak']:.0f}%) | " + " | ".join(cells) + " |"
            )
        lines.append("")
    pool = [r for r in rows if r["section"] == "pool"]
    if pool:
        lines += [
            "### 2x2 max-pool, forward + backward (median of "
            f"{pool[0]['rounds']} interleaved rounds)",
            "",
            "| width | input | nn.max_pool ms | reshaped max ms | speedup [min, max] |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key in dict.fromkeys((r["width"], r["shape"]) for r in pool):
            by = {r["form"]: r for r in pool if (r["width"], r["shape"]) == key}
            r = by["reshape"]
            lines.append(
                f"| {key[0]:g} | {key[1]} | {by['reduce_window']['ms']:.2f} | "
                f"{r['ms']:.2f} | {r['speedup_vs_reduce_window']:.2f} "
                f"[{r['ratio_range'][0]:.2f}, {r['ratio_range'][1]:.2f}] |"
            )
        lines.append("")
    step = [r for r in rows if r["section"] == "step"]
    if step:
        lines += [
            "### Whole train step, in one process (median of "
            f"{step[0]['rounds']} interleaved rounds)",
            "",
            "| width | variant | images/s | % peak | speedup vs f32 [min, max] | compile s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in step:
            lines.append(
                f"| {r['width']:g} | {r['variant']} | {r['images_per_s']} | "
                f"{r['pct_peak']} | {r['speedup_vs_f32']:.2f} [{r['ratio_range'][0]:.2f}, "
                f"{r['ratio_range'][1]:.2f}] | {r['compile_s']} |"
            )
        lines.append("")
    flags = [r for r in rows if r["section"] == "flags"]
    if flags:
        lines += [
            "### XLA flags, whole train step, one subprocess per run (ratio: median over "
            "runs of images/s / adjacent baselines)",
            "",
            "| variant | XLA_FLAGS | width | images/s per run | ratio [per run] | "
            "same numbers | baseline spread |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in flags:
            ratio = r["ratio_vs_adjacent_baseline"]
            rate = ", ".join(f"{v:g}" for v in r["images_per_s"]) or r["error"]
            per_run = ", ".join(f"{x:.2f}" for x in r["ratios"])
            lines.append(
                f"| {r['variant']} | `{r['xla_flags'] or r['launcher'] or '-'}` | "
                f"{r['width']:g} | {rate} | "
                f"{'-' if ratio is None else f'{ratio:.2f} [{per_run}]'} | "
                f"{'yes' if r['same_numbers_as_baseline'] else 'no'} | "
                f"{r['baseline_spread']:.2f} |"
            )
        lines.append("")
    total = next((r["wall_s"] for r in rows if r["section"] == "total"), None)
    lines.append(f"Wall time: {total} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
