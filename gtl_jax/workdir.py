"""A workdir's files: written atomically, metrics read back after a kill, learning curves for
plots, and which config changes a rerun in the same workdir may make."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from gtl_jax.config import (
    SECTIONS,
    EvaluationConfig,
    ExecutionConfig,
    SuiteConfig,
    flatten,
)

FITNESS_KEYS = ("fitness_max", "fitness_mean", "fitness_min", "fitness_ci")


# Fields a rerun in the same workdir may change: more generations extend the run; the test
# evaluation, the evidence suite, the final choice and the execution do not change the
# evolution's trajectory.
RESUMABLE_CHANGES = frozenset(
    {
        "evolution.generations",
        "evolution.final_candidates",
        "evolution.rescore_episodes",
        "descendants.eval_every",
        "data.data_dir",
        *(f"evaluation.{f.name}" for f in dataclasses.fields(EvaluationConfig)),
        *(f"suite.{f.name}" for f in dataclasses.fields(SuiteConfig)),
        *(f"execution.{f.name}" for f in dataclasses.fields(ExecutionConfig)),
    }
)


def config_changes(previous: dict, current: dict) -> list[str]:
    """The ``section.field`` names whose values differ between two configs' JSON, beyond
    ``RESUMABLE_CHANGES``. A field the previous config lacks (written before the field
    existed) counts as its dataclass default."""
    defaults = flatten({n: dataclasses.asdict(cls()) for n, cls in SECTIONS.items()})
    a, b = defaults | flatten(previous), flatten(current)
    return sorted(
        k
        for k in set(a) | set(b)
        if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES
    )


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The metrics of ``metrics.jsonl``; a line cut short by a kill is skipped, not fatal."""
    if not path.exists():
        return []
    history = []
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(m, dict):
            history.append(m)
    return history


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to a sibling temporary file, then renames it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_curve(curves: dict, setting: str, row: dict) -> None:
    """Adds one result row's learning curve to ``plots.plot_curves``'s input: the mean
    curve, its instinct and the final step's 95% half-width (the row's accuracy)."""
    entry = curves.setdefault(setting, {"steps": row["curve_steps"]})
    method = row["method"]
    entry[method] = row["curve"]
    entry[f"{method}_instinct"] = tuple(row["instinct"])
    entry[f"{method}_ci"] = [float("nan")] * (len(row["curve"]) - 1) + [
        row["accuracy"][1]
    ]
