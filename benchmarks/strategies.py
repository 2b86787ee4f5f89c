"""The execution strategies side by side: host loop, vmap and worker processes (the basis of "auto").

Figure: images/s of one SGD step of each of P=8 VGG11 networks (32x32x3 u8 images, batch 64,
5-way head), at widths 1/4 and 1, by the library's execution strategies: ``loop`` (one compiled
member step called per member, ``gtl_jax.executors.population_map``), ``vmap`` (the population
in one vmapped jit) and ``procs2`` (two processes pinned one per core, each the ``loop`` over
P/2 members: the worker processes ``python -m gtl_jax.evolve`` starts by default on CPU,
``execution.workers=0``).
Against: each other, in one run. ``strategy="auto"`` is ``loop`` on CPU and ``vmap`` on
GPU/TPU (``gtl_jax.executors.resolve_strategy``), and on CPU the population is split between
worker processes, one per core.
Bound: the strategy ``"auto"`` resolves to on this backend is at least as fast as the other
(``loop/vmap`` >= 1.0 on CPU, ``vmap/loop`` >= 1.0 elsewhere), and on a CPU with 2 cores the
worker processes are at least as fast as one process (``procs2/loop`` >= 1.0). The script exits
with status 1 when one is not: then "auto" or the default ``workers`` should change.
Command (run alone: the cores are shared; vmap at width 1 takes over 10 s a step on 2 cores):

    python benchmarks/strategies.py
    python benchmarks/strategies.py --strategies loop,vmap     # on a GPU/TPU
    python benchmarks/strategies.py --widths 0.0625 --pops 2 --budget-s 1  # this script's check

Last measured (2026-11-23, commit 7240ec5, 2 AMD EPYC cores, jax 0.10.2;
docs/cpu/population_speed.md): width 1/4, P=8: loop 580, vmap 221, procs2 1318 images/s
(loop/vmap 2.63, procs2/loop 2.27); width 1, P=8: loop 93.1, procs2 109.0 (procs2/loop 1.17),
vmap not run (over 12 s a step); at P=4 loop 84.3 against vmap 39.0 (2.16). At the default
command's size (VGG11 x1/8, 28x28, batch 32, P=8) loop 2373 against vmap 1117
(docs/cpu/default_size.md). Not yet run on a GPU or TPU.

Output: one JSON line per measurement (``--out``, default
``benchmarks/results/strategies_<machine>.jsonl``; also printed), each with the machine,
backend, device kind, versions, git commit, the sizes, ``compile_s`` (first step minus a steady
step), ``step_s`` (median of timed repeats after a warm-up, each ending on
``block_until_ready``), ``images_per_s`` and ``peak_mib``; then one ``ratio`` line per bound.
How a configuration is timed: ``_population_step.py``. What else was tried (members unrolled in
one jit, single jitted steps, virtual devices, joined processes): docs/cpu.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import _population_step as timing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    timing.add_timing_flags(
        parser, widths="0.25,1.0", pops="8", strategies="loop,vmap,procs2"
    )
    parser.add_argument("--bound", type=float, default=1.0, help="least ratio")
    args = parser.parse_args()
    env = timing.environment()
    out_path = pathlib.Path(
        args.out or timing.HERE / "results" / f"strategies_{env['machine']}.jsonl"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    common = {**env, "commit": timing.git_commit(), "command": " ".join(sys.argv)}
    rates, autos, broken = {}, set(), []
    with out_path.open("w") as f:

        def emit(row: dict) -> None:
            row = {**row, **common}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "step_s_all"}))

        for spec in timing.specs(args):
            where = {k: spec[k] for k in ("width", "pop", "strategy")}
            try:
                res = timing.measure(spec, args.timeout_s)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                emit({"kind": "error", **where, "error": str(e)})
                continue
            emit({"kind": "step", **where, "batch": args.batch, **res})
            rates[spec["width"], spec["pop"], spec["strategy"]] = res["images_per_s"]
            if "auto_strategy" in res:
                autos.add(res["auto_strategy"])
        # What the library picks on this backend (gtl_jax.executors.resolve_strategy).
        auto = autos.pop() if len(autos) == 1 else "loop"
        other = {"loop": "vmap", "vmap": "loop"}[auto]
        pairs = [(auto, other)] + ([("procs2", "loop")] if auto == "loop" else [])
        for width, pop in sorted({(w, p) for w, p, _ in rates}):
            for faster, slower in pairs:
                if (width, pop, faster) in rates and (width, pop, slower) in rates:
                    ratio = rates[width, pop, faster] / rates[width, pop, slower]
                    held = ratio >= args.bound
                    if not held:
                        broken.append((width, pop, f"{faster}/{slower}", ratio))
                    emit(
                        {
                            "kind": "ratio",
                            "width": width,
                            "pop": pop,
                            "strategy": faster,
                            "baseline": slower,
                            "ratio": ratio,
                            "bound": args.bound,
                            "held": held,
                        }
                    )
    print(f"wrote {out_path}")
    if broken:
        sys.exit(f"ratios below the bound {args.bound}: {broken}")


if __name__ == "__main__":
    main()
