"""The study's report: statistics over seeds (Student's t) and its markdown tables.

Each evolution is one sample, so a method's accuracy is its mean over seeds with a 95%
confidence half-width over the seeds (``seed_interval``); gains over scratch are paired by
episode, then taken over seeds (``aggregate``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gtl_jax.build import descendant_recipe
from gtl_jax.config import STUDY_METHODS, int_list
from gtl_jax.models import VITS

# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: 1.96 is close).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t95(n: int) -> float:
    """The 95% two-sided t quantile for a mean of ``n`` values (``n - 1`` d.o.f.)."""
    if n < 2:
        return float("nan")
    return T95[n - 2] if n - 2 < len(T95) else 1.96


def seed_interval(values: Any) -> tuple[float, float]:
    """Mean and 95% confidence half-width over seeds (Student's t; NaN for one seed)."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(t95(v.size) * v.std(ddof=1) / math.sqrt(v.size))


def aggregate(c, results: list[dict], costs: dict) -> list[dict]:
    """One row per (setting, method): seed-level mean and CI, episode CI, gain on scratch."""
    by = {}
    for r in results:
        by[(r["dataset"], r["way"], r["shot"], r["label"])] = r
    rows = []
    for dataset, way, shot in sorted(
        {k[:3] for k in by}, key=lambda s: (s[0] != "source", s)
    ):
        scratch = by.get((dataset, way, shot, "scratch"))
        methods = {}
        for key, r in by.items():
            if key[:3] == (dataset, way, shot):
                method = r["label"].split("/")[0]
                methods.setdefault(method, []).append(r)
        for method in STUDY_METHODS:
            if method not in methods:
                continue
            jobs = sorted(methods[method], key=lambda r: r["label"])
            final = [np.mean(r["final"]) for r in jobs]
            instinct = [np.mean(r["instinct"]) for r in jobs]
            episode_ci = [
                1.96 * np.std(r["final"]) / math.sqrt(len(r["final"])) for r in jobs
            ]
            row = {
                "dataset": dataset,
                "way": way,
                "shot": shot,
                "method": method,
                "seeds": len(jobs),
                "accuracy": seed_interval(final),
                "instinct": seed_interval(instinct),
                "per_seed": final,
                "per_seed_instinct": instinct,
                "episode_ci": float(np.mean(episode_ci)),
                "images": int(np.mean([costs[r["label"]]["images"] for r in jobs])),
                "curve_steps": jobs[0]["curve_steps"],
                "curve": np.mean([r["curve"] for r in jobs], axis=0).tolist(),
            }
            if scratch is not None:
                gains = [
                    np.mean(np.subtract(r["final"], scratch["final"])) for r in jobs
                ]
                instinct_gains = [
                    np.mean(np.subtract(r["instinct"], scratch["instinct"]))
                    for r in jobs
                ]
                row["gain"] = seed_interval(gains)
                row["instinct_gain"] = seed_interval(instinct_gains)
            rows.append(row)
    return rows


def _cell(interval: tuple[float, float]) -> str:
    mean, half = interval
    return f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def _gain(interval: tuple[float, float]) -> str:
    mean, half = interval
    return f"{100 * mean:+.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def results_table(c, rows: list[dict], share: float) -> str:
    """Markdown: per setting, each method's accuracy, instinct and gains over scratch."""
    recipe = descendant_recipe(c)
    lines = [
        f"{len(int_list(c.suite.seeds))} evolutions (seeds {c.suite.seeds}), {c.suite.study_episodes} "
        "fixed 5-way episodes per setting (N-way: 5/N as many), "
        f"{c.evaluation.eval_query} queries per class; {c.model.name} "
        f"x{c.model.width:g}, learngene "
        f"{100 * share:.1f}% of the parameters; descendants: "
        f"{recipe.describe(batch_norm_model=c.model.name not in VITS)}. "
        "Mean over seeds ± 95% CI over seeds (Student's t); 'episode CI': the mean "
        "per-episode 95% half-width within one seed; gains are paired with scratch by "
        "episode. Accuracies in %.",
    ]
    settings = sorted(
        {(r["dataset"], r["way"], r["shot"]) for r in rows},
        key=lambda s: (s[0] != "source", s),
    )
    for dataset, way, shot in settings:
        name = c.data.dataset if dataset == "source" else dataset
        split = (
            f"{c.suite.eval_split} classes" if dataset == "source" else "all classes"
        )
        lines += [
            "",
            f"**{name} ({split}), {way}-way {shot}-shot**",
            "",
            "| method | images trained on | accuracy | episode CI | gain on scratch "
            "| instinct | instinct gain |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            if (r["dataset"], r["way"], r["shot"]) != (dataset, way, shot):
                continue
            lines.append(
                f"| {r['method']} | {r['images']:,} | {_cell(r['accuracy'])} | "
                f"{100 * r['episode_ci']:.1f} | {_gain(r.get('gain', (float('nan'),) * 2))} | "
                f"{_cell(r['instinct'])} | "
                f"{_gain(r.get('instinct_gain', (float('nan'),) * 2))} |"
            )
    return "\n".join(lines)


def _order(setting: tuple) -> tuple:
    return (setting[0] != "source", *setting)


def summary_table(c, rows: list[dict]) -> str:
    """Markdown: methods by settings, three blocks (accuracy, gain on scratch, instinct)."""
    columns = sorted({(r["dataset"], r["way"], r["shot"]) for r in rows}, key=_order)
    names = [
        f"{w}-way {k}-shot" if d == "source" else f"{d} {w}-way {k}-shot"
        for d, w, k in columns
    ]
    cell = {(r["method"], r["dataset"], r["way"], r["shot"]): r for r in rows}
    methods = [m for m in STUDY_METHODS if any(r["method"] == m for r in rows)]
    lines = []
    for title, fmt, field in (
        ("accuracy", _cell, "accuracy"),
        ("gain on scratch", _gain, "gain"),
        ("instinct (before any step)", _cell, "instinct"),
    ):
        lines += [
            f"| {title} | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names),
        ]
        for m in methods:
            values = []
            for d, w, k in columns:
                r = cell.get((m, d, w, k))
                values.append(fmt(r[field]) if r is not None and field in r else "")
            lines.append(f"| {m} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


# --------------------------------------------------------------------------- selection


def _finite_mean(values: Any) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def selection_quantities(history: list[dict]) -> dict[str, float]:
    """One evolution's breeder's-equation totals from its per-generation metrics (fitness
    and parents, so runs logged before the statistics existed count too): the summed
    selection differential of generations 1..G-1 and the summed response of 2..G (the
    response a generation's selection produces shows in the next one)."""
    means = [_finite_mean(m["fitness"]) for m in history]
    differentials = [
        _finite_mean(np.asarray(m["fitness"])[np.asarray(m["parents"])]) - mean
        for m, mean in zip(history, means)
    ]
    return {
        "differential": float(np.sum(differentials[:-1])),
        "response": float(means[-1] - means[0]) if len(means) > 1 else float("nan"),
    }


def selection_rows(histories: dict[str, list[list[dict]]]) -> list[dict]:
    """Per arm (``evolved``, ``no_selection``, ``score``): the summed differential and
    response with 95% CIs over seeds, and the realised heritability of each selecting arm,
    (its response minus the no-selection control's) / its differential, paired by seed.

    The control's fitness rises too (what lifetimes pass on): only the difference is
    selection's. A heritability near 0 says fitness differences between siblings are not
    passed on; near 1, selection's whole differential is.
    """
    per_arm = {
        arm: [selection_quantities(h) for h in runs] for arm, runs in histories.items()
    }
    control = per_arm.get("no_selection")
    rows = []
    for arm, values in per_arm.items():
        row = {
            "arm": arm,
            "seeds": len(values),
            "differential": seed_interval([v["differential"] for v in values]),
            "response": seed_interval([v["response"] for v in values]),
        }
        if control is not None and arm != "no_selection":
            paired = [
                (v["response"] - w["response"]) / v["differential"]
                for v, w in zip(values, control)
                if v["differential"] > 0
            ]
            row["heritability"] = seed_interval(paired) if paired else None
        rows.append(row)
    return rows


def selection_table(rows: list[dict]) -> str:
    """Markdown: each arm's summed selection differential and response, and its realised
    heritability against the no-selection control (95% CIs over seeds)."""
    lines = [
        "| arm | seeds | selection differential (sum) | response (last - first "
        "mean fitness) | realised heritability |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        h = r.get("heritability")
        heritability = "" if h is None else f"{h[0]:.2f} ± {h[1]:.2f}"
        lines.append(
            f"| {r['arm']} | {r['seeds']} | {r['differential'][0]:.3f} ± "
            f"{r['differential'][1]:.3f} | {r['response'][0]:.3f} ± "
            f"{r['response'][1]:.3f} | {heritability} |"
        )
    return "\n".join(lines)
