"""The library's VGG11 population step against PyTorch's, with the same process layout on both sides.

Figure: images/s of one SGD step of each of P=8 VGG11 networks (32x32x3 u8 images, batch 64,
5-way head; momentum 0.9, lr 0.05, weight decay 5e-4), at widths 1/4 and 1, by this library in
two processes pinned one per core, each running its ``loop`` over P/2 members (``procs2``: how
``python -m gtl_jax.evolve``'s worker processes train the population on a 2-core CPU).
Against: PyTorch 2.13 (CPU) in the same layout (``torch_procs2``: two processes pinned one per
core, one thread each, each a loop over P/2 networks), with the same network (``TorchVGG``
below, compared with the library's before any timing: parameter counts, logits in train and
eval mode, one SGD step).
Bound: jax/torch images/s ratio >= 0.8 at each width, with 1 process per core on both sides.
The script exits with status 1 when a ratio is below it (``--bound`` changes it).
Command (run alone: the cores are shared; a few minutes on 2 quiet cores; needs
``pip install -e '.[bench]'``, torch 2.13.0 CPU):

    python benchmarks/vs_pytorch.py
    python benchmarks/vs_pytorch.py --check      # the model comparison only (seconds)
    python benchmarks/vs_pytorch.py --widths 0.0625 --pops 2 --budget-s 1  # this script's check

Last measured (2026-11-29, commit b4b1e23, a 2-core x86-64 CPU newer than the one of
docs/cpu.md's tables; no results file was committed): width 1/4, 3800 images/s against PyTorch's
3451 (ratio 1.10); width 1, 350 against 345-362 (0.97-1.01). In one process each instead (the
library's ``loop`` against PyTorch with 2 threads, ``--strategies loop,torch``; 2026-11-23,
commit 7240ec5, docs/cpu/population_speed.md): 580 against 1047 at width 1/4 (0.55), 93.1
against 81.0 at width 1 (1.15).

Output: one JSON line per measurement (``--out``, default
``benchmarks/results/vs_pytorch_<machine>.jsonl``; also printed), each with the machine,
backend, device kind, versions (python, jax, jaxlib, flax, torch), git commit, the sizes,
``compile_s`` (first step minus a steady step), ``step_s`` (median of timed repeats after a
warm-up, each ending on ``block_until_ready``), ``images_per_s`` and ``peak_mib``; then one
``ratio`` line per width (jax / torch images/s, the bound, whether it held). How a
configuration is timed: ``_population_step.py``. docs/cpu.md has what was tried around it.

The PyTorch network and the comparison with the library's: ``_torch_vgg.py``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import _torch_vgg


def main() -> None:
    import argparse
    import subprocess

    import _population_step as timing

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    timing.add_timing_flags(
        parser, widths="0.25,1.0", pops="8", strategies="procs2,torch_procs2"
    )
    parser.add_argument(
        "--check", action="store_true", help="the model comparison only"
    )
    parser.add_argument(
        "--bound", type=float, default=0.8, help="least jax/torch ratio"
    )
    args = parser.parse_args()
    if args.check:
        for width in args.widths.split(","):
            out = _torch_vgg.check(float(width), args.classes)
            print(json.dumps({"check": "vs_pytorch", "width": float(width), **out}))
        return
    env = timing.environment()
    out_path = pathlib.Path(
        args.out or timing.HERE / "results" / f"vs_pytorch_{env['machine']}.jsonl"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    common = {**env, "commit": timing.git_commit(), "command": " ".join(sys.argv)}
    rates, broken = {}, []
    with out_path.open("w") as f:

        def emit(row: dict) -> None:
            row = {**row, **common}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "step_s_all"}))

        for width in sorted({float(w) for w in args.widths.split(",")}):
            # The comparison is only fair if the networks are the same: checked first.
            emit(
                {
                    "kind": "check",
                    "width": width,
                    **timing.check(width, args.classes, args.timeout_s),
                }
            )
        for spec in timing.specs(args):
            where = {k: spec[k] for k in ("width", "pop", "strategy")}
            try:
                res = timing.measure(spec, args.timeout_s)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                emit({"kind": "error", **where, "error": str(e)})
                continue
            emit({"kind": "step", **where, "batch": args.batch, **res})
            rates[spec["width"], spec["pop"], spec["strategy"]] = res["images_per_s"]
        for (width, pop, strategy), rate in sorted(rates.items()):
            other = {"procs2": "torch_procs2", "loop": "torch"}.get(strategy)
            if other and (width, pop, other) in rates:
                ratio = rate / rates[width, pop, other]
                held = ratio >= args.bound
                if not held:
                    broken.append((width, pop, strategy, ratio))
                emit(
                    {
                        "kind": "ratio",
                        "width": width,
                        "pop": pop,
                        "strategy": strategy,
                        "baseline": other,
                        "ratio": ratio,
                        "bound": args.bound,
                        "held": held,
                    }
                )
    print(f"wrote {out_path}")
    if broken:
        sys.exit(f"jax/torch images/s below the bound {args.bound}: {broken}")


if __name__ == "__main__":
    main()
