"""``python -m gtl_jax.study``: the evidence for a claim, over several evolutions (seeds).

One evolution is one sample: evolutions of one config that differ only in their seed end
several points apart on the same test episodes. This command runs, for every seed of
``suite.seeds``, an evolution (``evolved/seed_S``) and its *no-selection* control
(``evolution.selection=none``: the same lifetimes, critics and mutations, parents drawn at
random; ``no_selection/seed_S``), pre-trains the baselines, and evaluates every method on the same
fixed episodes with the same descendant keys:

- ``learngene``: each evolution's learngene file.
- ``no-selection``: each control evolution's final learngene (drawn at random from its last
  population, as its parents were).
- ``score-selection``: evolutions whose tournaments rank ECO's lineage score (fitness plus
  the parent's score decayed by ``evolution.score_decay``) instead of raw fitness (``score/seed_S``).
- ``untrained-circuit``: the circuit of a randomly initialised network (seed S): what the
  circuit's shape and the zeroed cross weights give without any training.
- ``pretrain-circuit-eq``: the circuit cut from a network pre-trained conventionally on all
  meta-train classes, seeing as many images as one evolution's lifetimes and critics (seed S).
- ``pretrain-closed-eq``: the same pre-training with the circuit kept closed (weights from
  non-gene into gene channels held at zero, as lifetimes with ``evolution.life_closed`` do): what
  evolution adds over plain pre-training of the same closed circuit at equal compute.
- ``scratch``: random initialisation (the reference every gain is measured from).
- ``pretrain-full``: every conv layer of a network pre-trained for ``suite.pretrain_steps``
  (transfers five times the parameters: a reference, not a competitor).

Settings: ``suite.study_ways`` x ``evaluation.eval_shots`` on the dataset's evaluation
split, and 5-way on ``suite.transfer_dataset`` (another domain; ``digits``: scikit-learn's 8x8 digits). The table
gives each method's mean over seeds with a 95% confidence half-width over the seeds
(Student's t, seeds - 1 degrees of freedom), the mean per-episode half-width, and the
gain over scratch (paired by episode, then over seeds).

Workdir: ``evolved/``, ``no_selection/``, ``score/`` (one evolve workdir per seed),
``pretrained/`` (the baselines' networks), ``jobs/`` (each job's result: a rerun computes only
what is missing), ``jobs.jsonl``, ``results.md``, ``results.json``, ``fitness.png``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gtl_jax import checkpoint, cli, distributed, evolve, plots, progress, stopping
from gtl_jax.build import (
    configure_jax,
    descendant_recipe,
    eval_shots,
    fixed_episodes,
    load_pools,
    model_of,
)
from gtl_jax.cli import PROGRESS_FORMAT, QUIET, Flag
from gtl_jax.config import (
    STUDY_METHODS,
    TRANSFER_DATASETS,
    flatten,
    int_list,
    validate_config,
)
from gtl_jax.executors import DescendantEvaluator
from gtl_jax.learngene import (
    Learngene,
    LearngeneSpec,
    extract_learngene,
    learngene_size,
    make_spec,
    spec_from_json,
)
from gtl_jax.population import init_network, make_optimizer
from gtl_jax.progress import progress_bar
from gtl_jax.study_report import (
    aggregate,
    results_table,
    selection_rows,
    selection_table,
    summary_table,
)
from gtl_jax.suite import (
    episode_fingerprint,
    pretrained_network,
    resolve_workers,
    split_names,
)
from gtl_jax.workdir import write_atomic

SEEDED = frozenset(STUDY_METHODS[:6])  # one transfer per seed
# The evolution arms: method -> (folder, selection; None: the config's own).
ARMS = {
    "learngene": ("evolved", None),
    "no-selection": ("no_selection", "none"),
    "score-selection": ("score", "score"),
}


def seeds(c: ml_collections.ConfigDict) -> tuple[int, ...]:
    return int_list(c.suite.seeds)


def study_methods(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    return split_names(c.suite.study_methods)


def seed_config(
    c: ml_collections.ConfigDict, seed: int, selection: str
) -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict(c.to_dict())
    s.seed, s.evolution.selection = seed, selection
    return s


def evolution_images(c: ml_collections.ConfigDict, cost: dict) -> int:
    """Images one evolution trained on: lifetime batches and critic support sets."""
    return int(
        cost["lifetime_steps"] * c.evolution.life_batch
        + cost["critic_steps"] * c.evolution.critic_way * c.evolution.critic_shot
    )


# --------------------------------------------------------------------------- transfers


def sources(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[dict]:
    """What each job transfers, as JSON (every worker process rebuilds it from this)."""
    out = []
    for method in study_methods(c):
        if method not in SEEDED:
            out.append({"label": method, "method": method, "seed": None})
            continue
        for seed in seeds(c):
            out.append(
                {"label": f"{method}/seed{seed}", "method": method, "seed": seed}
            )
    return out


def learngene_path(workdir: pathlib.Path, method: str, seed: int) -> pathlib.Path:
    return workdir / ARMS[method][0] / f"seed_{seed}" / "learngene"


def equal_compute_steps(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> int:
    """Pre-training steps that see as many images as one evolution (seed 0's file)."""
    seed = seeds(c)[0]
    meta = checkpoint.read_metadata(learngene_path(workdir, "learngene", seed))
    return math.ceil(evolution_images(c, meta["cost"]) / int(c.suite.pretrain_batch))


def pretrained(
    c: ml_collections.ConfigDict,
    method: str,
    seed: int | None,
    train_images: jax.Array,
    spec: LearngeneSpec,
    workdir: pathlib.Path,
    quiet: bool,
) -> tuple[Any, dict]:
    """The pretrained network a method cuts from (cached in ``workdir/pretrained``)."""
    p = ml_collections.ConfigDict(c.to_dict())
    if method in ("pretrain-circuit-eq", "pretrain-closed-eq"):
        p.seed, p.suite.pretrain_steps = seed, equal_compute_steps(c, workdir)
    closed = spec if method == "pretrain-closed-eq" else None
    return pretrained_network(p, train_images, workdir, quiet=quiet, closed_spec=closed)


def build_transfer(
    source: dict,
    c: ml_collections.ConfigDict,
    spec: LearngeneSpec,
    train_images: jax.Array,
    workdir: pathlib.Path,
    quiet: bool = True,
) -> Learngene | None:
    """What one source transfers: a learngene-shaped dict of blocks, or None (scratch).
    Pre-trains (and caches) the network a pre-trained method cuts from if needed."""
    method, seed = source["method"], source["seed"]
    if method == "scratch":
        return None
    if method in ARMS:
        return checkpoint.load_learngene(learngene_path(workdir, method, seed))[0]
    if method == "untrained-circuit":
        model = model_of(c, c.evolution.life_way)
        tx = make_optimizer("sgd", 0.0)
        state = init_network(
            model, tx, jax.random.key(seed), tuple(train_images.shape[2:])
        )
        return extract_learngene(spec, state.params, state.batch_stats)
    variables, _ = pretrained(c, method, seed, train_images, spec, workdir, quiet)
    params, stats = variables["params"], variables.get("batch_stats", {})
    if method == "pretrain-full":
        model = model_of(c, c.evolution.life_way)
        full = make_spec(model, 1.0, spec.in_channels)
        return extract_learngene(full, params, stats)
    return extract_learngene(spec, params, stats)


# --------------------------------------------------------------------------- evaluation


def settings(c: ml_collections.ConfigDict) -> list[tuple[str, int, int]]:
    """``(dataset, way, shot)`` of every evaluation setting."""
    shots = eval_shots(c)
    out = [("source", w, s) for w in int_list(c.suite.study_ways) for s in shots]
    if c.suite.transfer_dataset:
        out += [(c.suite.transfer_dataset, 5, s) for s in shots]
    return out


# Config fields that do not change any job's numbers: how the work is laid out, and which
# jobs are asked for (a job is named by its setting and its method and seed).
NEUTRAL_FIELDS = frozenset(
    {
        "execution.workers",
        "data.data_dir",
        "execution.distributed",
        "execution.processes",
        "suite.seeds",
        "suite.study_methods",
        "suite.study_ways",
        "evaluation.eval_shots",
        "suite.transfer_dataset",
        "evaluation.eval_episodes",
        "suite.inherit_episodes",
        "suite.methods",
        "suite.heads",
    }
)


def job_path(
    workdir: pathlib.Path, c: ml_collections.ConfigDict, job: tuple
) -> pathlib.Path:
    """Where a job's result is kept: named by its setting, method and seed, and a digest of
    the config fields that change its numbers (another config computes it again)."""
    fields = {
        k: v
        for k, v in flatten(json.loads(c.to_json())).items()
        if k not in NEUTRAL_FIELDS
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[
        :10
    ]
    dataset, way, shot, label = job
    name = f"{dataset}-{way}way-{shot}shot-{label.replace('/', '-')}-{digest}.json"
    return workdir / "jobs" / name


def setting_episodes(c: ml_collections.ConfigDict, way: int) -> int:
    """Episodes of an N-way setting: ``study_episodes`` at 5-way, 5/N as many otherwise, so
    every setting scores about as many query images (a 20-way episode has four times the
    queries of a 5-way one, and costs about four times as much)."""
    return max(1, round(int(c.suite.study_episodes) * 5 / way))


class StudySuite:
    """Pools, transfers, evaluators and fixed episodes of every setting, built once per
    process (the main one, or each worker)."""

    def __init__(self, c: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.c, self.workdir = c, workdir
        pools = load_pools(c)
        self.pools = {"source": pools[c.suite.eval_split]}
        transfer = c.suite.transfer_dataset
        if transfer:
            loader = TRANSFER_DATASETS[transfer]
            self.pools[transfer] = loader(image_size=c.data.image_size)["test"]
        train_images = jnp.asarray(pools["train"].images)
        first = seeds(c)[0]
        self.spec = spec_from_json(
            checkpoint.read_metadata(learngene_path(workdir, "learngene", first))[
                "spec"
            ]
        )
        self.transfers = {
            source["label"]: build_transfer(source, c, self.spec, train_images, workdir)
            for source in sources(c, workdir)
        }
        self.recipe = descendant_recipe(c)
        self._evaluators, self._episodes = {}, {}

    def evaluator(self, way: int) -> DescendantEvaluator:
        if way not in self._evaluators:
            self._evaluators[way] = DescendantEvaluator(
                model_of(self.c, way),
                self.recipe,
                n_way=way,
                strategy=self.c.execution.strategy,
                zero_cross=self.c.evolution.zero_cross,
            )
        return self._evaluators[way]

    def episodes(self, dataset: str, way: int, shot: int):
        setting = (dataset, way, shot)
        if setting not in self._episodes:
            key = jax.random.fold_in(jax.random.key(self.c.evaluation.eval_seed), shot)
            key = jax.random.fold_in(key, way)
            pool = self.pools[dataset]
            self._episodes[setting] = fixed_episodes(
                key,
                jnp.asarray(pool.images),
                episodes=setting_episodes(self.c, way),
                n_way=way,
                k_shot=shot,
                n_query=min(
                    int(self.c.evaluation.eval_query), pool.images_per_class - shot
                ),
            )
        return self._episodes[setting]

    def job(self, dataset: str, way: int, shot: int, label: str, on_step=None) -> dict:
        """One method's (one seed's) descendants on one setting's episodes; the result is
        also written to ``job_path`` (a rerun of the study reads it instead)."""
        episodes, keys = self.episodes(dataset, way, shot)
        r = self.evaluator(way)(keys, episodes, self.transfers[label], on_step=on_step)
        result = {
            "dataset": dataset,
            "way": way,
            "shot": shot,
            "label": label,
            "fingerprint": episode_fingerprint(episodes),
            "final": np.asarray(r.final).tolist(),
            "instinct": np.asarray(r.instinct).tolist(),
            "curve": np.asarray(r.curve).mean(0).tolist(),
            "curve_steps": list(self.recipe.curve_steps),
        }
        path = job_path(self.workdir, self.c, (dataset, way, shot, label))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(result))
        return result


_WORKER_SUITE: StudySuite | None = None


def _start_worker(config_json: str, workdir: str) -> None:
    global _WORKER_SUITE
    configure_jax()
    _WORKER_SUITE = StudySuite(
        ml_collections.ConfigDict(json.loads(config_json)), pathlib.Path(workdir)
    )


def _worker_job(job, progress):
    return _WORKER_SUITE.job(*job, on_step=progress.put)


# --------------------------------------------------------------------------- run


# The pools and spec the pre-training jobs of one process share (``_start_pretraining``).
_PRETRAIN: dict = {}


def _start_pretraining(config_json: str, workdir: str) -> None:
    """Loads the meta-train pool and the learngene spec once per process."""
    configure_jax()
    c = ml_collections.ConfigDict(json.loads(config_json))
    pools = load_pools(c)
    path = learngene_path(pathlib.Path(workdir), "learngene", seeds(c)[0])
    _PRETRAIN.update(
        c=c,
        workdir=pathlib.Path(workdir),
        spec=spec_from_json(checkpoint.read_metadata(path)["spec"]),
        train_images=jnp.asarray(pools["train"].images),
    )


def _pretrain_job(source: dict) -> str:
    p = _PRETRAIN
    build_transfer(source, p["c"], p["spec"], p["train_images"], p["workdir"])
    return source["label"]


def pretrain_all(c: ml_collections.ConfigDict, workdir: pathlib.Path, quiet: bool):
    """Every pre-trained baseline's network, trained in parallel worker processes and
    cached in ``workdir/pretrained`` (a rerun finds them there and trains nothing)."""
    todo = [s for s in sources(c, workdir) if s["method"].startswith("pretrain")]
    if not todo:
        return
    workers = min(resolve_workers(c), len(todo))
    with progress_bar(
        total=len(todo), desc="pre-training", unit="network", disable=quiet
    ) as bar:
        init = (c.to_json(), str(workdir))
        if workers == 1:
            _start_pretraining(*init)
            for source in todo:
                _pretrain_job(source)
                bar.update()
            return
        with distributed.worker_pool(workers, _start_pretraining, init) as (pool, _):
            futures = [pool.submit(_pretrain_job, source) for source in todo]
            for future in futures:
                future.result()
                bar.update()


def evolve_all(c: ml_collections.ConfigDict, workdir: pathlib.Path, quiet: bool):
    """Every seed's evolution and no-selection control (each resumes from its workdir)."""
    # The learngene arm always runs: its first seed's file names the spec and the cost.
    methods = {"learngene", *study_methods(c)}
    runs = []
    for seed in seeds(c):
        for method, (folder, selection) in ARMS.items():
            if method in methods:
                selection = selection or c.evolution.selection
                runs.append((folder, seed_config(c, seed, selection)))
    histories = {}
    for i, (folder, sc) in enumerate(runs, start=1):
        if not quiet:
            print(
                f"[{i}/{len(runs)}] evolution {folder}/seed_{sc.seed}", file=sys.stderr
            )
        out = evolve.run(
            sc, workdir / folder / f"seed_{sc.seed}", quiet=quiet, final_table=False
        )
        histories.setdefault(folder, []).append(out["history"])
    return histories


@progress.honours_quiet
def run(c: ml_collections.ConfigDict, workdir: pathlib.Path, *, quiet: bool = False):
    """Evolutions, controls, baselines and the evaluation; returns the summary."""
    start = time.perf_counter()
    validate_config(c)
    histories = evolve_all(c, workdir, quiet)
    evolve_seconds = time.perf_counter() - start

    # Pre-train every baseline once (in worker processes, one per core on CPU); the
    # evaluation then reads them from the cache.
    pretrain_all(c, workdir, quiet)

    suite = None
    if resolve_workers(c) == 1:
        suite = StudySuite(c, workdir)
    labels = [s["label"] for s in sources(c, workdir)]
    jobs = [(*setting, label) for setting in settings(c) for label in labels]
    # Most expensive first (more ways and shots), so the workers finish together.
    jobs.sort(key=lambda j: -(j[1] * j[2]))
    steps = descendant_recipe(c).steps
    t = time.perf_counter()
    done = {}
    for job in jobs:  # a rerun reads the jobs an earlier (or killed) run finished
        path = job_path(workdir, c, job)
        if path.is_file():
            done[job] = json.loads(path.read_text())
    todo = [job for job in jobs if job not in done]
    with progress_bar(
        total=len(jobs) * steps,
        initial=len(done) * steps,
        desc="descendants",
        disable=quiet,
        bar_format=PROGRESS_FORMAT,
    ) as bar:
        workers = resolve_workers(c)
        bar.set_postfix_str(f"{len(todo)} jobs, {workers} worker process(es)")
        if not todo:
            results = []
        elif suite is not None:
            results = [suite.job(*job, on_step=bar.update) for job in todo]
        else:
            init = (c.to_json(), str(workdir))
            with distributed.worker_pool(workers, _start_worker, init) as (
                pool,
                progress,
            ):
                futures = [pool.submit(_worker_job, job, progress) for job in todo]
                results = distributed.wait_all(futures, progress, bar.update)
    results = [done[job] for job in done] + results
    evaluate_seconds = time.perf_counter() - t
    for setting in {(r["dataset"], r["way"], r["shot"]) for r in results}:
        prints = {
            r["fingerprint"]
            for r in results
            if (r["dataset"], r["way"], r["shot"]) == setting
        }
        if len(prints) != 1:
            raise RuntimeError(f"episodes of {setting} differ between jobs")

    costs = {}
    for source in sources(c, workdir):
        costs[source["label"]] = build_transfer_cost(source, c, workdir)
    rows = aggregate(c, results, costs)
    learngene, meta = checkpoint.load_learngene(
        learngene_path(workdir, "learngene", seeds(c)[0])
    )
    share = float(meta["parameter_share"]["share_of_network"])
    table = results_table(c, rows, share)
    table = table.replace("\n", "\n\n" + summary_table(c, rows) + "\n", 1)
    selection = selection_rows(histories)
    table += "\n\nSelection (breeder's equation, over seeds):\n\n" + selection_table(
        selection
    )
    summary = {
        "rows": rows,
        "parameter_share": share,
        "learngene_params": learngene_size(learngene),
        "selection": selection,
        "evolution_seconds": evolve_seconds,
        "evaluation_seconds": evaluate_seconds,
        "total_seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (workdir / "results.json").write_text(json.dumps(summary, indent=1))
    (workdir / "results.md").write_text(table + "\n")
    plots.plot_study_fitness(histories, workdir / "fitness.png")
    plots.plot_life_genes(histories, workdir / "life_genes.png")
    summary["table"] = table
    return summary


def build_transfer_cost(source: dict, c, workdir: pathlib.Path) -> dict:
    """The images a source's transfer was trained on (from its files, without loading it)."""
    method, seed = source["method"], source["seed"]
    if method in ARMS:
        meta = checkpoint.read_metadata(learngene_path(workdir, method, seed))
        return {"images": evolution_images(c, meta["cost"])}
    if method in ("pretrain-circuit-eq", "pretrain-closed-eq"):
        return {"images": equal_compute_steps(c, workdir) * int(c.suite.pretrain_batch)}
    if method == "pretrain-full":
        return {"images": int(c.suite.pretrain_steps) * int(c.suite.pretrain_batch)}
    return {"images": 0}


def stop_message(workdir: os.PathLike | str, generations: int) -> str:
    """What an interrupted study keeps in ``workdir``: each evolution's last checkpointed
    generation, the pretrained networks cached and the jobs evaluated, as the text after
    ``interrupted: ``."""
    workdir = pathlib.Path(workdir)
    runs = sorted(
        p.parent for p in workdir.glob("**/checkpoints") if p.is_dir() and p != workdir
    )
    kept = [
        f"{'the evolution' if run == workdir else run.relative_to(workdir).as_posix()} "
        f"at generation {checkpoint.latest_step(run) or 0} of {generations}"
        for run in runs
    ]
    networks = len(list(workdir.glob("pretrained/*/metadata.json")))
    if networks:
        kept.append(f"{networks} pretrained network(s)")
    jobs = len(list(workdir.glob("jobs/*.json")))
    if jobs:
        kept.append(f"{jobs} evaluated job(s)")
    if not kept:
        return f"nothing is kept in {workdir} yet; run the same command again to start"
    return f"kept in {workdir}: {', '.join(kept)}; run the same command again to resume"


STUDY_FLAGS = (
    Flag(
        "workdir",
        None,
        "where the evolutions, pre-trained networks, jobs and results go; a rerun computes "
        "only what is missing (default: runs/study_<config>)",
    ),
    QUIET,
)


@cli.command
def main(argv: list[str]) -> int:
    cl = cli.parse_command_line(
        argv,
        prog="python -m gtl_jax.study",
        description="Several evolutions (seeds), their no-selection controls and the "
        "pre-training baselines, evaluated on the same fixed episodes: every method as "
        "mean and 95% CI over seeds.",
        own=STUDY_FLAGS,
    )
    c = cl.config
    validate_config(c)
    workdir = pathlib.Path(
        cl.flags["workdir"] or f"runs/study_{cli.config_label(cl.spec)}"
    )
    stopping.describe(lambda: stop_message(workdir, int(c.evolution.generations)))
    configure_jax()
    summary = run(c, workdir, quiet=cl.flags["quiet"])
    print()
    print(summary["table"])
    print(cli.smoke_note(cl.spec), end="")
    print(
        f"\nwall time {summary['total_seconds']:.0f} s (evolutions "
        f"{summary['evolution_seconds']:.0f} s, descendants "
        f"{summary['evaluation_seconds']:.0f} s); workdir {workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
