"""Where one VGG11 train step's time goes on one core, layer by layer, against the matmul peak.

Run it alone (about 4 minutes on quiet cores):

    python benchmarks/cpu/step_profile.py  # writes benchmarks/cpu/results/step_profile.{jsonl,md}

What is measured, for each width (``--widths``, default 1/4 and 1): ``cpu_explore.py``'s train
step (``compile_step``: one SGD step, lr 0.05, of one VGG11 with a 5-way head on 64 random u8
32x32x3 images), in a process pinned to one core (``--core``), as each worker process of
``python -m gtl_jax.evolve`` runs, with the command line's JAX settings
(``gtl_jax.experiment.configure_jax``):

1. **Speed.** images/s of the library's step and of the same step with the small-map rule the
   library had before the wide-map rule (``small_maps_before``: only 2x2 and 1x1 maps as
   shifted matmuls, each tap multiplying the zero-padded window), median over ``--rounds``
   interleaved rounds of about ``--timing-s`` each (``cpu_explore.interleaved``), with each
   round's ratio.
2. **Profile.** A ``jax.profiler`` trace of ``--profile-steps`` library steps. Each XLA op's time
   is given to a layer by its HLO metadata (``stageS/convC``: the conv and its BatchNorm;
   ``stageS relu, pool``; ``head``; ``other``: the loss and the optimizer update; a fusion
   goes with the conv or matmul inside it) and to a pass (``backward`` when JAX named it
   ``transpose(jvp(...))``, ``forward`` when ``jvp(...)``, else ``loss, update``), and to its
   kind (the op's name without its number: ``ynn_fusion`` is XLA CPU's YNNPACK call, which
   runs the convs; ``dot_general``/``dot`` are matmuls).
3. **Efficiency.** Per conv layer, useful FLOPs per second: the multiply-adds of input pixels
   inside the map, ``2 I O (3H-2)(3W-2)`` per image for a 3x3 'SAME' conv on an H x W map
   (forward; the backward is the input and the kernel gradient, twice that, the first layer
   only the kernel's), as % of the f32 matmul peak measured in the same process
   (``cpu_explore.matmul_peak_gflops``). Padding taps are not counted: on a 4x4 map they are 31% of a 3x3 conv's taps.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
BATCH, IMAGE, CLASSES = 64, (32, 32, 3), 5


def small_maps_before():
    """The small-map rule before the wide-map rule: ``(shifted_matmul_conv, uses_shifted)``."""
    import jax.numpy as jnp

    def shifted_matmul_conv(x, kernel):
        kh, kw = kernel.shape[:2]
        _, h, w, _ = x.shape
        ph, pw = kh // 2, kw // 2
        xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        out = None
        for i in range(kh):
            if i + h <= ph or i >= ph + h:
                continue
            for j in range(kw):
                if j + w <= pw or j >= pw + w:
                    continue
                term = jnp.einsum(
                    "bhwi,io->bhwo", xp[:, i : i + h, j : j + w], kernel[i, j]
                )
                out = term if out is None else out + term
        return out

    def uses_shifted(h, w, channels, small_map_pixels=None):
        return h * w <= (4 if small_map_pixels is None else small_map_pixels)

    return shifted_matmul_conv, uses_shifted


def conv_layers(model) -> list[dict]:
    """VGG's conv layers at 32x32: name, map size, in and out channels, useful GFLOP per image."""
    layers, channels, size = [], IMAGE[-1], IMAGE[0]
    for s, widths in enumerate(model.stage_widths(), start=1):
        for i, width in enumerate(widths, start=1):
            forward = 2 * channels * width * (3 * size - 2) ** 2 / 1e9
            first = not layers
            layers.append(
                {
                    "layer": f"stage{s}/conv{i}",
                    "shape": f"{size}x{size}x{channels}->{width}",
                    "forward_gflop": forward,
                    "backward_gflop": forward * (1 if first else 2),
                }
            )
            channels = width
        if size > 2:
            size //= 2
    return layers


def hlo_op_names(hlo: str) -> dict[str, str]:
    """Each instruction's JAX op name in a compiled program's HLO text.

    A fusion takes the op name of the convolution or matmul it calls, if any (XLA names a
    fusion after its root, e.g. a pooling gradient's ``reduce_sum`` fused after a conv).
    """
    instruction = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)")
    computations, current = collections.defaultdict(list), None
    own, calls = {}, {}
    for line in hlo.splitlines():
        head = re.match(r"%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            continue
        m = instruction.match(line)
        if not m:
            continue
        name, rest = m.groups()
        op = re.search(r'op_name="([^"]*)"', rest)
        if op:
            own[name] = op.group(1)
            if re.search(r"\b(convolution|dot)\(", rest):
                computations[current].append(op.group(1))
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        if called:
            calls[name] = called.group(1)
    return {
        name: (computations.get(calls.get(name), []) or [op])[0]
        for name, op in own.items()
    }


def measure(width: float, rounds: int, timing_s: float, profile_steps: int) -> dict:
    """Runs in the pinned worker: speed, profile and efficiency of one width."""
    from gtl_jax.experiment import configure_jax

    configure_jax()
    import jax
    from cpu_explore import (
        compile_step,
        interleaved,
        matmul_peak_gflops,
        step_flops,
    )

    from gtl_jax.models import build_model

    jax.config.update("jax_enable_compilation_cache", False)
    peak = matmul_peak_gflops()
    conv, rule = small_maps_before()
    compiled, args, _ = compile_step(width)
    before, _, _ = compile_step(
        width, {"shifted_matmul_conv": conv, "uses_shifted_matmuls": rule}
    )
    seconds = interleaved(
        {
            "library": lambda: compiled(*args),
            "small_maps_before": lambda: before(*args),
        },
        rounds,
        timing_s,
    )
    speed = {name: BATCH / statistics.median(s) for name, s in seconds.items()}
    ratios = [b / a for a, b in zip(seconds["library"], seconds["small_maps_before"])]

    xla_gflop = step_flops(compiled) / 1e9
    op_names = hlo_op_names(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(profile_steps):
            out = compiled(*args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        (trace,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(trace))
    by_layer, by_kind = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                op_name = op_names.get(event.name)
                if op_name is None:  # not an XLA op of this program (Python, runtime)
                    continue
                ms = event.duration_ns / 1e6 / profile_steps
                m = re.search(r"/(stage\d+)(/conv\d+)?/|/(head)/", op_name)
                if m is None:
                    layer = "other"
                elif m.group(3):
                    layer = "head"
                else:
                    layer = m.group(1) + (m.group(2) or " relu, pool")
                which = (
                    "backward"
                    if "transpose(" in op_name
                    else "forward"
                    if "jvp(" in op_name
                    else "loss, update"
                )
                by_layer[(layer, which)] += ms
                by_kind[re.sub(r"\.\d+$", "", event.name)] += ms
    rows = []
    for conv in conv_layers(build_model("vgg11", CLASSES, width=width)):
        for which in ("forward", "backward"):
            ms = by_layer.pop((conv["layer"], which), 0.0)
            gflop = conv[f"{which}_gflop"] * BATCH
            rows.append(
                {
                    "layer": conv["layer"],
                    "shape": conv["shape"],
                    "pass": which,
                    "ms": ms,
                    "useful_gflop": gflop,
                    "gflops": gflop / ms * 1e3 if ms else None,
                    "pct_peak": 100 * gflop / ms * 1e3 / peak if ms else None,
                }
            )
    for (layer, which), ms in sorted(by_layer.items()):
        rows.append({"layer": layer, "shape": "", "pass": which, "ms": ms})
    op_ms = sum(r["ms"] for r in rows)
    useful = sum(r.get("useful_gflop", 0.0) for r in rows)
    return {
        "width": width,
        "matmul_peak_gflops": peak,
        "images_per_s": speed,
        "round_ratios": ratios,
        "xla_gflop_per_step": xla_gflop,
        "useful_conv_gflop_per_step": useful,
        "op_ms": op_ms,
        "step_ms": 1e3 * BATCH / speed["library"],
        "layers": rows,
        "kinds": dict(by_kind.most_common()),
    }


def worker(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    print(json.dumps(measure(**spec)))


def write_markdown(path: pathlib.Path, results: list[dict], meta: dict) -> None:
    lines = [
        "# One VGG11 train step on one core, layer by layer (`benchmarks/cpu/step_profile.py`)",
        "",
        f"Command: `{meta['command']}`; {meta['date']}; {meta['machine']}; "
        f"jax {meta['jax']}.",
        "",
        "One SGD step of one VGG11 (32x32x3, batch 64, 5-way head), jitted, in a process "
        "pinned to one core. `% peak`: useful FLOPs (input pixels inside the map; padding "
        "taps not counted) per second, of the f32 matmul peak measured in the same process.",
        "",
    ]
    for r in results:
        speed, peak = r["images_per_s"], r["matmul_peak_gflops"]
        ratio = statistics.median(r["round_ratios"])
        step_pct = 100 * r["xla_gflop_per_step"] / (r["step_ms"] / 1e3) / peak
        lines += [
            f"## Width {r['width']:g}",
            "",
            f"- Matmul peak, one core: {peak:.1f} GFLOP/s.",
            f"- Library step: {speed['library']:.1f} images/s ({r['step_ms']:.1f} ms); "
            f"XLA counts {r['xla_gflop_per_step']:.2f} GFLOP per step: "
            f"{step_pct:.0f}% of the peak.",
            f"- `small_maps_before`: {speed['small_maps_before']:.1f} images/s; library / "
            f"it: x{ratio:.2f} (rounds: "
            + ", ".join(f"{v:.2f}" for v in r["round_ratios"])
            + ").",
            f"- Profiled op time {r['op_ms']:.1f} ms per step; the convs' useful "
            f"{r['useful_conv_gflop_per_step']:.2f} GFLOP in it.",
            "",
            "| layer | shape | pass | ms | share | GFLOP/s | % peak |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["layers"]:
            g = row.get("gflops")
            lines.append(
                f"| {row['layer']} | {row['shape']} | {row['pass']} | {row['ms']:.1f} | "
                f"{100 * row['ms'] / r['op_ms']:.0f}% | "
                + (f"{g:.1f} | {row['pct_peak']:.0f}% |" if g else "- | - |")
            )
        lines += ["", "Op time by kind (ms per step):", ""]
        lines += [
            f"- `{kind}`: {ms:.1f} ({100 * ms / r['op_ms']:.0f}%)"
            for kind, ms in list(r["kinds"].items())[:8]
        ]
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--timing-s", type=float, default=1.0, help="seconds per timing"
    )
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args()
    results = []
    for width in args.widths:
        spec = {
            "width": width,
            "rounds": args.rounds,
            "timing_s": args.timing_s,
            "profile_steps": args.profile_steps,
        }
        out = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            check=True,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {args.core}),
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"width {width:g}: {results[-1]['images_per_s']}", flush=True)
    import jax

    meta = {
        "command": " ".join(["python benchmarks/cpu/step_profile.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, pinned to core {args.core}",
        "jax": jax.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "step_profile.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps({**r, **meta}) + "\n")
    write_markdown(args.out / "step_profile.md", results, meta)
    print((args.out / "step_profile.md").read_text())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
