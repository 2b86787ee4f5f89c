"""Time the fine-tuning of a population of descendants, per execution strategy.

Run: python benchmarks/cpu/descendant_step.py [--episodes 50] [--width 0.125] [--steps 20]
Each (strategy, shot) evaluates scratch descendants of ``--episodes`` 5-way episodes of the
Omniglot test classes (``DescendantEvaluator``: init, instinct, ``--steps`` fine-tuning steps,
query accuracy) ``--repeats`` times after a first, compiling call. Prints one JSON line per
(strategy, shot): ms per member-step (the steady evaluation time / (episodes x steps), query
and instinct included) and the time of the first call. Run it alone: the machine's 2 cores are
shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp

from gtl_jax.data import load_omniglot
from gtl_jax.descendants import Recipe
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.experiment import configure_jax, fixed_episodes
from gtl_jax.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strategies", default="loop,vmap")
    args = parser.parse_args()
    configure_jax()
    test = jnp.asarray(load_omniglot()["test"].images)
    model = build_model("vgg11", 5, width=args.width)
    for shot in (1, 5):
        episodes, keys = fixed_episodes(
            jax.random.key(0),
            test,
            episodes=args.episodes,
            n_way=5,
            k_shot=shot,
            n_query=15,
        )
        for strategy in args.strategies.split(","):
            evaluator = DescendantEvaluator(
                model, Recipe(steps=args.steps), n_way=5, strategy=strategy
            )
            start = time.perf_counter()
            jax.block_until_ready(evaluator(keys, episodes, None).final)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(args.repeats):
                jax.block_until_ready(evaluator(keys, episodes, None).final)
            steady = (time.perf_counter() - start) / args.repeats
            steady /= args.episodes * args.steps
            print(
                json.dumps(
                    {
                        "benchmark": "descendant_step",
                        "strategy": strategy,
                        "shot": shot,
                        "episodes": args.episodes,
                        "width": args.width,
                        "ms_per_member_step": round(1e3 * steady, 3),
                        "first_call_s": round(first, 2),
                        "backend": jax.default_backend(),
                        "jax": jax.__version__,
                        "machine": platform.machine(),
                    }
                )
            )


if __name__ == "__main__":
    main()
