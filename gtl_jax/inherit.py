"""``python -m gtl_jax.inherit``: what a learngene buys, against what, at what cost.

Loads a learngene file, builds one descendant per fixed, seeded test episode and fine-tunes it,
side by side with the baselines on the same episodes and the same descendant keys: scratch,
pretrain-full, pretrain-circuit (what evolution adds over plain pre-training at the same
share), heur-lg and proto-frozen (``gtl_jax.suite`` describes each).

Each fine-tuned method runs once per descendant head in ``suite.heads`` (random, zero,
prototype). The descendant may have another shape than the learngene's ancestor
(``--config.model.name``, ``--config.model.width``: wider, or a deeper VGG) and another
dataset (``--config.data.dataset``). The jobs are ``gtl_jax.suite``'s; the pretrained network
is cached in the workdir.

Workdir contents: ``config.json``, ``pretrained/``, ``results.md``, ``results.jsonl``,
``results.json``, ``curves.png``, ``fitness.png``, ``share.png``; with a ViT descendant also
``attention.png`` (where the descendants look, and how much on the foreground).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np

from gtl_jax import checkpoint, cli, plots, progress, stopping
from gtl_jax.build import configure_jax, eval_shots
from gtl_jax.cli import PROGRESS_FORMAT, QUIET, Flag
from gtl_jax.descendants import mean_confidence
from gtl_jax.progress import progress_bar
from gtl_jax.suite import (
    Suite,
    episode_fingerprint,
    resolve_workers,
    run_jobs,
)
from gtl_jax.workdir import FITNESS_KEYS, add_curve


@progress.honours_quiet
def run(
    c: ml_collections.ConfigDict,
    learngene_path: pathlib.Path,
    workdir: pathlib.Path,
    *,
    quiet: bool = False,
) -> dict:
    """The evidence suite; returns the results (also written to the workdir)."""
    start = time.perf_counter()
    suite = Suite(c, learngene_path, workdir, quiet=quiet)
    meta, shots = suite.meta, eval_shots(c)
    config_json = c.to_json()
    (workdir / "config.json").write_text(
        json.dumps(
            {"learngene": str(learngene_path), **json.loads(config_json)},
            indent=2,
            sort_keys=True,
        )
    )
    workers = resolve_workers(c)
    jobs = [(shot, method) for shot in shots for method in suite.tuned]
    total = len(jobs) * len(suite.heads) * suite.steps
    with progress_bar(
        total=total, desc="descendants", disable=quiet, bar_format=PROGRESS_FORMAT
    ) as bar:
        bar.set_postfix_str(f"{workers} worker process(es)")
        results = run_jobs(
            suite, jobs, workers, config_json, learngene_path, workdir, bar
        )

    rows, fingerprints = [], {}
    common = {
        "way": c.evaluation.eval_way,
        "query": c.evaluation.eval_query,
        "episodes": c.suite.inherit_episodes,
        "split": c.suite.eval_split,
    }
    for shot in shots:
        for method in suite.methods:
            if method == "proto-frozen":
                found = results.get((shot, "pretrain-full"))
                t = time.perf_counter()
                # pretrain-full's instinct is exactly this (same network, same readout).
                final = found["instinct"] if found else suite.frozen_prototypes(shot)
                method_rows = [
                    {
                        "method": method,
                        "head": "frozen features",
                        "shot": shot,
                        "recipe": "none (nearest prototype)",
                        "accuracy": mean_confidence(final),
                        "instinct": mean_confidence(final),
                        "curve_steps": [0],
                        "curve": [float(np.mean(final))],
                        "seconds": time.perf_counter() - t,
                        "per_episode": np.asarray(final).tolist(),
                    }
                ]
            else:
                method_rows = results[shot, method]["rows"]
                fingerprints[shot] = results[shot, method]["fingerprint"]
            for row in method_rows:
                rows.append(
                    {
                        **common,
                        **row,
                        "episode_fingerprint": fingerprints.get(shot)
                        or episode_fingerprint(suite.episodes(shot)[0]),
                        "params_transferred": suite.shares[method],
                        "cost": suite.costs[method],
                    }
                )
    # Every job saw the same episodes of its shot setting (whichever process ran it).
    for (shot, _), result in results.items():
        if result["fingerprint"] != fingerprints[shot]:
            raise RuntimeError(f"{shot}-shot episodes differ between jobs")
    (workdir / "results.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    table = results_table(c, rows, shots, meta)
    focus = None
    if hasattr(suite.target, "patch"):  # a ViT: where its descendants look
        focus = write_attention(c, suite, shots[0], workdir)
        table += "\n\n" + attention_table(c, focus, shots[0])
    (workdir / "results.md").write_text(table + "\n")
    summary = {
        "learngene": str(learngene_path),
        "descendant": {
            "model": c.model.name,
            "width": c.model.width,
            "dataset": c.data.dataset,
        },
        "rows": rows,
        "episode_fingerprints": fingerprints,
        "workers": workers,
        "total_seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
    }
    if focus is not None:
        summary["attention"] = focus
    (workdir / "results.json").write_text(json.dumps(summary, indent=1))
    write_plots(c, rows, meta, learngene_path, workdir)
    summary["table"] = table
    return summary


def results_table(c, rows: list[dict], shots, meta: dict) -> str:
    """Markdown: one row per (method, head); instinct and accuracy per shot setting."""
    header = "| method | head | params transferred | cost |"
    rule = "| --- | --- | --- | --- |"
    for shot in shots:
        header += f" instinct {shot}-shot | {shot}-shot |"
        rule += " --- | --- |"
    first = rows[0]
    e = c.evaluation
    lines = [
        f"{e.eval_way}-way, {e.eval_query} queries per class, {c.suite.inherit_episodes} "
        f"episodes (seed {e.eval_seed}) of the {c.data.dataset} meta-{c.suite.eval_split} "
        f"classes; descendants {c.model.name} x{c.model.width:g} fine-tuned with "
        f"{first['recipe']} "
        f"(head as given); learngene from {meta['model']['name']} "
        f"x{meta['model']['width']:g}; mean and 95% CI (%)",
        "",
        header,
        rule,
    ]
    seen = []
    for row in rows:
        if (row["method"], row["head"]) not in seen:
            seen.append((row["method"], row["head"]))
    for method, head in seen:
        cells = {
            r["shot"]: r for r in rows if (r["method"], r["head"]) == (method, head)
        }
        r0 = next(iter(cells.values()))
        line = (
            f"| {method} | {head} | {100 * r0['params_transferred']:.1f}% "
            f"| {describe_cost(r0['cost'])} |"
        )
        for shot in shots:
            r = cells[shot]
            line += (
                f" {100 * r['instinct'][0]:.1f} ± {100 * r['instinct'][1]:.1f} |"
                f" {100 * r['accuracy'][0]:.1f} ± {100 * r['accuracy'][1]:.1f} |"
            )
        lines.append(line)
    return "\n".join(lines)


# ViT descendants' attention (attention.png): the first query image of this many episodes
# is drawn; the share on foreground is averaged over every query image of ATTENTION_EPISODES.
ATTENTION_PLOTTED = 10
ATTENTION_EPISODES = 40
ATTENTION_METHODS = ("learngene", "scratch", "pretrain-circuit", "pretrain-full")


def write_attention(c, suite: Suite, shot: int, workdir: pathlib.Path) -> dict:
    """Attention rollout of the fine-tuned ViT descendants of the first ``shot`` setting on
    query images of the unseen classes: ``attention.png`` and, per method, the mean share of
    the maps on foreground patches (and those patches' share of the image)."""
    methods = [m for m in ATTENTION_METHODS if m in suite.tuned]
    queries = c.evaluation.eval_way * c.evaluation.eval_query
    episodes = min(ATTENTION_EPISODES, c.suite.inherit_episodes)
    found = suite.attention(shot, methods, episodes, queries)
    # The first query of each of the first episodes: several classes, not one.
    first = np.arange(min(ATTENTION_PLOTTED, episodes)) * queries
    plots.plot_attention(
        found["images"][first],
        {m: found["maps"][m][first] for m in methods},
        workdir / "attention.png",
        shares=found["shares"],
    )
    return {
        m: {
            "foreground_share": found["shares"][m][0],
            "foreground_area": found["shares"][m][1],
            "images": int(found["images"].shape[0]),
        }
        for m in methods
    }


def attention_table(c, focus: dict, shot: int) -> str:
    """Markdown: each method's share of attention on the foreground (attention.png)."""
    n = next(iter(focus.values()))["images"]
    lines = [
        f"Attention of the fine-tuned descendants ({c.evaluation.eval_way}-way {shot}-shot, "
        f"first head), class token's rollout over {n} query images of the "
        f"meta-{c.suite.eval_split} classes: the share on patches with foreground pixels "
        "(a uniform map gives the area)",
        "",
        "| method | share on foreground | foreground area |",
        "| --- | --- | --- |",
    ]
    for m, f in focus.items():
        lines.append(
            f"| {m} | {100 * f['foreground_share']:.1f}% | "
            f"{100 * f['foreground_area']:.1f}% |"
        )
    return "\n".join(lines)


def describe_cost(cost: dict) -> str:
    what = cost.get("what")
    if what == "evolution" and "lifetime_steps" in cost:
        return (
            f"evolution: {cost['lifetime_steps']} lifetime + {cost['critic_steps']} "
            f"critic steps, {cost['seconds']:.0f} s"
        )
    if what == "pre-training":
        return f"pre-training: {cost['steps']} steps, {cost['seconds']:.0f} s"
    return "none" if what == "none" else "unknown"


def write_plots(c, rows, meta, learngene_path: pathlib.Path, workdir: pathlib.Path):
    curves = {}
    for r in rows:
        if r["method"] == "proto-frozen":
            continue
        add_curve(curves, f"{r['way']}-way {r['shot']}-shot, {r['head']} head", r)
    if curves:
        plots.plot_curves(curves, workdir / "curves.png")
    plots.plot_share(rows, workdir / "share.png")
    history = meta.get("history")
    if history is None:  # files from before the history was stored: the run's metrics
        metrics = pathlib.Path(learngene_path).parent / "metrics.jsonl"
        if metrics.is_file():
            history = [json.loads(x) for x in metrics.read_text().splitlines() if x]
    if history and all(k in history[0] for k in FITNESS_KEYS[:3]):
        plots.plot_fitness(history, workdir / "fitness.png")


# --------------------------------------------------------------------------- CLI


def stop_message(workdir: pathlib.Path) -> str:
    """What an interrupted evidence suite keeps in ``workdir`` (the line after
    ``interrupted: ``)."""
    cached = sorted(workdir.glob("pretrained/*/metadata.json"))
    kept = (
        f"{len(cached)} pretrained network(s) cached in {workdir / 'pretrained'} (not "
        "trained again)"
        if cached
        else f"nothing is cached in {workdir}"
    )
    return (
        f"{kept}; results are written once every descendant has run: run the same "
        "command again to run them"
    )


INHERIT_FLAGS = (
    Flag(
        "learngene",
        "runs/omniglot/learngene",
        "learngene file (directory) written by python -m gtl_jax.evolve",
    ),
    Flag(
        "workdir",
        None,
        "where the pretrained network, results and plots go (default: the learngene "
        "file's folder/inherit)",
    ),
    QUIET,
)


def check_learngene_exists(path: pathlib.Path) -> None:
    """A learngene path that does not exist (nor its ``.old`` of an interrupted write):
    one error saying which command writes it."""
    if path.exists() or path.with_name(path.name + ".old").exists():
        return
    raise checkpoint.LearngeneFileError(
        f"no learngene file at {path}: run python -m gtl_jax.evolve "
        f"--workdir={path.parent} first (it writes {path}), or give "
        "--learngene=<the learngene folder of an evolve workdir>"
    )


@cli.command
def main(argv: list[str]) -> int:
    cl = cli.parse_command_line(
        argv,
        prog="python -m gtl_jax.inherit",
        description="Inherit a learngene file into descendants and compare them, on "
        "the same seeded few-shot episodes, with scratch, pretrain-full, "
        "pretrain-circuit, Heur-LG and frozen-feature prototypes. The descendant's "
        "model.name and model.width default to the learngene's ancestor's; "
        "--config.model.name/--config.model.width give wider or deeper descendants.",
        own=INHERIT_FLAGS,
    )
    check_learngene_exists(pathlib.Path(cl.flags["learngene"]))
    meta = checkpoint.read_metadata(cl.flags["learngene"])
    c = cl.config
    # Unless given, the descendant is the ancestor's architecture.
    if "model.name" not in cl.overridden:
        c.model.name = meta["model"]["name"]
    if "model.width" not in cl.overridden:
        c.model.width = float(meta["model"]["width"])
    learngene_path = pathlib.Path(cl.flags["learngene"])
    workdir = pathlib.Path(cl.flags["workdir"] or learngene_path.parent / "inherit")
    stopping.describe(lambda: stop_message(workdir))
    configure_jax()
    summary = run(c, learngene_path, workdir, quiet=cl.flags["quiet"])
    print()
    print(summary["table"])
    print(cli.smoke_note(cl.spec), end="")
    print(f"\nwall time {summary['total_seconds']:.0f} s; workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
