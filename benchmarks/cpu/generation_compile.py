"""Compile time of an evolve generation against population size P.

Run: python benchmarks/cpu/generation_compile.py [--pops 2,16] [--strategy auto] [--out DIR]
For each P, one ``python -m gtl_jax.evolve`` run on the smoke config (tournaments of 2, two
generations) with an empty compilation cache, in a fresh process. Generation 1 compiles and
runs; generation 2 only runs; compile seconds = generation 1 - generation 2 (both from the
run's metrics.jsonl). Writes generation_compile.jsonl and prints a Markdown table.
Run it alone: the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax


def measure(pop: int, strategy: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        command = [
            sys.executable,
            "-m",
            "gtl_jax.evolve",
            "--config=configs/omniglot.py:smoke",
            "--quiet",
            f"--config.evolution.pop_size={pop}",
            "--config.evolution.tournament_size=2",
            "--config.evolution.generations=2",
            f"--config.execution.strategy={strategy}",
            "--config.evaluation.eval_shots=1",
            "--config.evaluation.eval_episodes=1",
            f"--workdir={tmp / 'w'}",
            *extra,
        ]
        env = dict(os.environ, GTL_JAX_CACHE_DIR=str(tmp / "xla"))
        subprocess.run(command, env=env, check=True, capture_output=True)
        metrics = [
            json.loads(line)
            for line in (tmp / "w" / "metrics.jsonl").read_text().splitlines()
        ]
    first, second = (m["seconds"] for m in metrics)
    return {
        "pop": pop,
        "strategy": strategy,
        "extra": extra,
        "generation_1_s": first,
        "generation_2_s": second,
        "compile_s": first - second,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pops", default="2,16")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    parser.add_argument("extra", nargs="*", help="more evolve flags (after --)")
    args = parser.parse_args()
    rows = []
    for pop in (int(p) for p in args.pops.split(",")):
        row = measure(pop, args.strategy, args.extra)
        row |= {"jax": jax.__version__, "command": " ".join(sys.argv)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "generation_compile.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n| P | generation 1 (s) | generation 2 (s) | compile (s) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['pop']} | {r['generation_1_s']:.1f} | {r['generation_2_s']:.1f} | "
            f"{r['compile_s']:.1f} |"
        )
    base = rows[0]["compile_s"]
    for r in rows[1:]:
        print(
            f"\ncompile at P={r['pop']} / P={rows[0]['pop']}: {r['compile_s'] / base:.2f}"
        )


if __name__ == "__main__":
    main()
