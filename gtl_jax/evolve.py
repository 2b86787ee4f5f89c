"""``python -m gtl_jax.evolve``: evolve a learngene, then compare its descendants with scratch.

The shell around the pure core: reads the config and flags (``gtl_jax.experiment``), loads
the data, runs the generations with a progress bar (on CPU the members' lives in worker
processes pinned one per core, ``gtl_jax.executors.LifeWorkers``), writes metrics as JSON lines, checkpoints
every generation (a rerun with the same workdir resumes), writes the best learngene as a
learngene file, and ends with a table of descendants vs scratch on fixed test episodes of the
meta-test classes (the learngene and scratch jobs of ``gtl_jax.suite``).

  python -m gtl_jax.evolve --config=configs/omniglot.py:smoke --config.seed=3 \\
      --config.evolution.generations=3 --workdir=runs/x

Workdir contents: ``config.json``, ``metrics.jsonl`` (and in ``tensorboard/`` the same scalars,
the config as text and hparams, and the results table as text), ``checkpoints/``, ``learngene/``, ``results.md``,
``results.json``, ``fitness.png``, ``curves.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gtl_jax import checkpoint, cli, distributed, plots, progress, stopping, tensorboard
from gtl_jax.build import (
    configure_jax,
    descendant_recipe,
    eval_shots,
    life_workers,
    load_pools,
    make_executor,
    pool_stream,
    require_splits,
    start_life_workers,
)
from gtl_jax.cli import PROGRESS_FORMAT, QUIET, Flag
from gtl_jax.config import ConfigError, validate_config
from gtl_jax.evolution import EvolutionState
from gtl_jax.executors import HostExecutor
from gtl_jax.learngene import parameter_share
from gtl_jax.models import VITS
from gtl_jax.progress import progress_bar
from gtl_jax.suite import Suite, resolve_workers, run_jobs
from gtl_jax.workdir import (
    FITNESS_KEYS,
    add_curve,
    config_changes,
    read_metrics,
    write_atomic,
)

# The stream of the final choice's key (re-scoring episodes), folded into the root key.
FINAL_STREAM = 2**31 - 2


# --------------------------------------------------------------------------- steps of a run


def check_run(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[dict, dict]:
    """Every check before anything is written: the config, the data, the workdir's previous
    config. Returns the class pools and the config as JSON."""
    validate_config(c)
    pools = load_pools(c)
    require_splits(
        pools, ("train", "val", "test"), c, "evolution: lifetimes, critics, final table"
    )
    validate_config(c, pools)
    config_json = json.loads(c.to_json())
    config_path = workdir / "config.json"
    if config_path.exists():
        differ = config_changes(json.loads(config_path.read_text()), config_json)
        if differ:
            raise ConfigError(
                f"workdir {workdir} holds a run with another config (fields differ: "
                f"{', '.join(differ)}); use another --workdir or the same config"
            )
    return pools, config_json


def restore(executor: HostExecutor, workdir: pathlib.Path, init_key: jax.Array):
    """The checkpoint manager and the restored ``(state, ...)``, the state placed on this
    run's devices, or ``(None, None)`` if the workdir has no checkpoints yet (nothing is
    written). A checkpoint holds the P real members, so it restores on any device count."""
    # Process 0's view: the others may look after it has created the directory.
    # One manager per run: each one opened starts removing a killed save's temporary
    # directory in a background thread, and two of them race to delete the same one.
    if not distributed.from_process_0((workdir / "checkpoints").is_dir()):
        return None, None
    manager = checkpoint.state_manager(workdir)
    try:
        template = jax.eval_shape(executor.evo.init, init_key)
        restored = checkpoint.restore_state(
            manager, template, executor.placement.logical_shardings(template)
        )
        if restored is not None:
            restored = (executor.place(restored[0]), *restored[1:])
    except BaseException:  # a damaged checkpoint, a Ctrl-C: Orbax's work ends first
        checkpoint.close_manager(manager)
        raise
    return manager, restored


def generation_line(m: dict, generations: int) -> str:
    """One log line per generation: fitness, divergence and time."""
    return (
        f"generation {m['generation']}/{generations}: fitness max {m['fitness_max']:.3f}, "
        f"mean {m['fitness_mean']:.3f} ± {m.get('fitness_ci', float('nan')):.3f}, "
        f"diverged {m['diverged']}, {m['seconds']:.1f} s"
    )


def evolve_generations(
    c: ml_collections.ConfigDict,
    executor: HostExecutor,
    root_key: jax.Array,
    state: EvolutionState,
    manager,
    workdir: pathlib.Path,
    history: list[dict],
    *,
    quiet: bool,
    writer: bool,
) -> EvolutionState:
    """Runs the generations left (up to ``evolution.generations``): after each one its
    metrics line (``metrics.jsonl``, TensorBoard) and a checkpoint; closes ``manager``.
    Appends each generation's metrics to ``history``. A streamed dataset
    (``gtl_jax.build.pool_stream``: ImageNet-1K) hands generation g the pools drawn for
    ``(seed, g)``, prepared while generation g - 1 trained; other datasets' generations
    use the evolution's own pools, as before."""
    generations = int(c.evolution.generations)
    steps_per_generation = c.evolution.life_steps + c.evolution.critic_steps
    metrics_path = workdir / "metrics.jsonl"
    workers = life_workers(c) if int(state.generation) < generations else 1
    with (
        contextlib.ExitStack() as stack,
        progress_bar(
            total=generations * steps_per_generation,
            desc="evolution",
            disable=quiet,
            initial=int(state.generation) * steps_per_generation,
            bar_format=PROGRESS_FORMAT,  # whole steps (workers report fractions)
        ) as bar,
    ):
        stack.callback(checkpoint.close_manager, manager)  # also when one raises
        # Joined processes stop together, after a generation's checkpoint (one alone would
        # leave the others waiting in a collective).
        joined = jax.process_count() > 1
        stop_check = stack.enter_context(
            stopping.agreed(distributed.agree_on_stop if joined else None)
        )
        events = None
        if writer and int(state.generation) < generations:  # closed by the stack
            events = stack.enter_context(
                tensorboard.EventWriter(
                    workdir / "tensorboard", start_step=int(state.generation) + 1
                )
            )
            # The config as this (possibly resumed) run uses it: text and hparams.
            events.config(c.to_dict(), metrics=FITNESS_KEYS, step=int(state.generation))
        pool = None
        if workers > 1:
            pool = stack.enter_context(start_life_workers(c, workers))
            bar.set_description(f"evolution ({workers} worker processes)")
        # A streamed dataset (ImageNet-1K): each generation its own pools, the next one's
        # prepared in a background thread while this one trains; None: the evolution's own.
        stream = None
        if int(state.generation) < generations:
            stream = pool_stream(c)
        if stream is not None:
            stack.enter_context(stream)
        while int(state.generation) < generations:
            t = time.perf_counter()
            pools = None
            if stream is not None:
                fresh = stream.get(int(state.generation))
                pools = executor.put_pools(
                    **{split: p.images for split, p in fresh.items()}
                )
                del fresh  # host memory: the pools being prepared, and these on device
            state, m = executor.generation(
                root_key, state, on_step=bar.update, workers=pool, pools=pools
            )
            pools = None
            m["seconds"] = time.perf_counter() - t
            bar.set_postfix_str(
                f"best={m['fitness_max']:.3f}, mean={m['fitness_mean']:.3f}"
            )
            # Workers report fractions of steps: snap to the whole generation's count.
            bar.n = int(state.generation) * steps_per_generation
            bar.refresh()
            if writer:  # also with --quiet, which drops only the progress bars
                bar.write(generation_line(m, generations))
            history.append(m)
            # Metrics first: a kill between the two writes leaves a metrics line beyond the
            # checkpoint, which the resume drops and rewrites; the other order would lose it.
            if writer:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(m) + "\n")
                events.scalars(m["generation"], m)
            checkpoint.save_state(
                manager,
                int(state.generation),
                executor.logical(state),  # the P real members, on any device count
                {"generation": int(state.generation)},
            )
            stop_check()
    return state


def write_learngene(
    c: ml_collections.ConfigDict,
    executor: HostExecutor,
    root_key: jax.Array,
    state: EvolutionState,
    pools: dict,
    workdir: pathlib.Path,
    config_json: dict,
    history: list[dict],
) -> dict:
    """Chooses the final learngene (``HostExecutor.choose_final``) and writes it as a
    learngene file with its metadata (by process 0); returns its parameter share."""
    evo = executor.evo
    state = executor.logical(state)  # the P real members
    image_shape = pools["train"].image_shape
    shapes = jax.eval_shape(
        lambda k: evo.critic_model.init(k, jnp.zeros((1, *image_shape)), train=False),
        jax.random.key(0),
    )
    share = parameter_share(evo.spec, shapes["params"])
    ec = c.evolution
    final, choice = executor.choose_final(
        jax.random.fold_in(root_key, FINAL_STREAM),
        state,
        candidates=int(ec.final_candidates),
        episodes=int(ec.rescore_episodes),
    )
    final_fitness = choice.get(
        "rescored", [float(distributed.to_host(state.fitness)[final])]
    )
    if "candidates" in choice:
        final_fitness = final_fitness[choice["candidates"].index(final)]
    done = int(state.generation)
    checkpoint.save_learngene(  # by process 0 only
        workdir / "learngene",
        jax.tree.map(lambda x: distributed.to_host(x)[final], state.trained),
        {
            "model": {"name": c.model.name, "width": c.model.width},
            "spec": evo.spec.to_json(),
            "image_shape": list(image_shape),
            "normalisation": "uint8 / 255, ink = 1",
            "dataset": {
                "name": c.data.dataset,
                "splits": {s: pools[s].num_classes for s in pools},
            },
            "generation": done,
            "fitness": float(np.asarray(final_fitness).ravel()[0]),
            "choice": choice,
            "parameter_share": share,
            "config": config_json,
            # What the learngene cost, and its fitness over generations (for plots).
            "cost": {
                "generations": done,
                "lifetime_steps": done * ec.pop_size * ec.life_steps,
                "critic_steps": done * ec.pop_size * ec.num_critics * ec.critic_steps,
                "seconds": sum(m.get("seconds", 0.0) for m in history),
            },
            "history": [
                {k: m[k] for k in ("generation", *FITNESS_KEYS) if k in m}
                for m in history
            ],
            # The heritable lifetime hyperparameters the chosen learngene's host lived
            # with (evolution.life_genes), from the last generation's metrics.
            "life_genes": {
                name: history[-1][f"life_genes/{name}"][final]
                for name in (plots.life_gene_names(history[-1:]) if history else [])
            },
        },
    )
    return share


def evaluate(
    c: ml_collections.ConfigDict, workdir: pathlib.Path, *, quiet: bool
) -> dict:
    """Learngene descendants vs scratch on the same seeded test episodes, per shot setting.

    The learngene and scratch jobs of the evidence suite (``gtl_jax.suite.Suite``) on the
    learngene file just written, with ``evaluation.eval_episodes`` episodes and the config's
    head; the jobs run in ``execution.workers`` processes (one per core on CPU). With joined
    processes (``processes``, ``distributed``) each process runs its block of every job's
    descendants.
    """
    e = ml_collections.ConfigDict(c.to_dict())
    e.suite.methods, e.suite.heads = "learngene,scratch", c.descendants.head
    e.suite.inherit_episodes = c.evaluation.eval_episodes
    e.suite.eval_split = "test"
    distributed.barrier("learngene written")  # by process 0
    path = workdir / "learngene"
    workers = resolve_workers(e) if jax.process_count() == 1 else 1
    suite = Suite(e, path, workdir) if workers == 1 else None
    jobs = [(s, m) for s in eval_shots(c) for m in ("learngene", "scratch")]
    with progress_bar(
        total=len(jobs) * c.descendants.steps,
        desc="descendants",
        disable=quiet,
        bar_format=PROGRESS_FORMAT,
    ) as bar:
        bar.set_postfix_str(f"{workers} worker process(es)")
        done = run_jobs(suite, jobs, workers, e.to_json(), path, workdir, bar)
    return {
        f"{shot}-shot/{method}": done[shot, method]["rows"][0]
        for shot, method in sorted(done)
    }


def results_table(c, results: dict, share: dict) -> str:
    shots = eval_shots(c)
    recipe = descendant_recipe(c)
    described = recipe.describe(batch_norm_model=c.model.name not in VITS)
    e = c.evaluation
    header = "| method | params transferred |"
    rule = "| --- | --- |"
    for shot in shots:
        header += f" instinct {shot}-shot | {shot}-shot |"
        rule += " --- | --- |"
    lines = [
        f"{e.eval_way}-way, {e.eval_query} queries per class, {e.eval_episodes} test "
        f"episodes (seed {e.eval_seed}), {c.data.dataset} meta-test classes; "
        f"{c.model.name} x{c.model.width:g}; descendants: {described}; mean and "
        "95% CI (%)",
        "",
        header,
        rule,
    ]
    for method, transferred in (
        ("learngene", f"{100 * share['share_of_network']:.1f}%"),
        ("scratch", "0%"),
    ):
        row = f"| {method} | {transferred} |"
        for shot in shots:
            r = results[f"{shot}-shot/{method}"]
            row += (
                f" {100 * r['instinct'][0]:.1f} ± {100 * r['instinct'][1]:.1f} |"
                f" {100 * r['accuracy'][0]:.1f} ± {100 * r['accuracy'][1]:.1f} |"
            )
        lines.append(row)
    return "\n".join(lines)


def write_results(
    c: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    share: dict,
    *,
    quiet: bool,
    start: float,
    evolve_seconds: float,
) -> dict:
    """The final table (``evaluate``) and its files: ``results.md``, ``results.json``,
    ``curves.png`` (by process 0). Returns the summary (its ``table`` too); ``start``: when
    the run started (``time.perf_counter``)."""
    results = evaluate(c, workdir, quiet=quiet)
    table = results_table(c, results, share)
    summary = {
        "results": results,
        "parameter_share": share,
        "evolution_seconds": evolve_seconds,
        "total_seconds": time.perf_counter() - start,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "processes": jax.process_count(),
    }
    curves = {}
    for r in results.values():
        add_curve(curves, f"{c.evaluation.eval_way}-way {r['shot']}-shot", r)
    if jax.process_index() == 0:
        (workdir / "results.md").write_text(table + "\n")
        with tensorboard.EventWriter(workdir / "tensorboard") as events:
            events.text("results", table, step=int(c.evolution.generations))
        (workdir / "results.json").write_text(json.dumps(summary, indent=1))
        plots.plot_curves(curves, workdir / "curves.png")
    return summary | {"table": table}


# --------------------------------------------------------------------------- run


@progress.honours_quiet
def run(
    c: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    *,
    quiet: bool = False,
    final_table: bool = True,
) -> dict:
    """Evolution, learngene file, evaluation; returns the results (also written to workdir).

    ``final_table=False`` stops after the learngene file (``gtl_jax.study`` evaluates many
    evolutions together).

    Every check (config, data, the workdir's previous config, its checkpoint) runs before
    anything in the workdir is written, so a refused run leaves the workdir as it was.

    Several processes (``execution.distributed``, ``execution.processes``): every process
    runs the same program on its own devices and loads the whole class pools (they are
    small, and every device samples episodes from all classes; a streamed dataset's
    generation pools are drawn from the same keys in every process); only process 0 writes
    ``config.json``, metrics, plots, the learngene file and results; checkpoints are written
    by Orbax, which coordinates the processes.
    """
    start = time.perf_counter()
    joined = c.execution.distributed or os.environ.get(distributed.CHILD_ENV)
    if joined and not jax.distributed.is_initialized():
        distributed.initialize()
    writer = jax.process_index() == 0
    quiet = quiet or not writer
    pools, config_json = check_run(c, workdir)
    executor = make_executor(c, pools)
    init_key, root_key = jax.random.split(jax.random.key(c.seed))
    manager, restored = restore(executor, workdir, init_key)

    # The checks are done: from here on the workdir is written.
    workdir.mkdir(parents=True, exist_ok=True)
    if manager is None:
        manager = checkpoint.state_manager(workdir)
    if writer:
        config_text = json.dumps(config_json, indent=2, sort_keys=True)
        (workdir / "config.json").write_text(config_text)
    metrics_path = workdir / "metrics.jsonl"
    history = []
    if restored is None:
        state = executor.init(init_key)
    else:
        state = restored[0]
        done = int(state.generation)
        history = [
            m for m in read_metrics(metrics_path) if m.get("generation", 0) <= done
        ]
        if not quiet:
            print(f"resuming {workdir} after generation {done}", file=sys.stderr)
    if writer:
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    evolve_start = time.perf_counter()
    state = evolve_generations(
        c,
        executor,
        root_key,
        state,
        manager,
        workdir,
        history,
        quiet=quiet,
        writer=writer,
    )
    evolve_seconds = time.perf_counter() - evolve_start

    share = write_learngene(
        c, executor, root_key, state, pools, workdir, config_json, history
    )
    if writer and history:
        plots.plot_fitness(history, workdir / "fitness.png")
        plots.plot_life_genes({"evolution": [history]}, workdir / "life_genes.png")
    if not final_table:
        return {"evolution_seconds": evolve_seconds, "history": history}
    return write_results(
        c, workdir, share, quiet=quiet, start=start, evolve_seconds=evolve_seconds
    )


def stop_message(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> str:
    """What an interrupted run left in ``workdir`` and how to go on (the line after
    ``interrupted: ``), read from the disk."""
    done, total = checkpoint.latest_step(workdir), int(c.evolution.generations)
    if done is None:
        return (
            f"no generation was checkpointed in {workdir} yet; run the same command "
            "again to start the evolution"
        )
    if done < total:
        return (
            f"generation {done} of {total} is checkpointed in {workdir}; run the same "
            "command again to resume"
        )
    gene = workdir / "learngene"
    try:
        written = checkpoint.read_metadata(gene).get("generation") == done
    except checkpoint.LearngeneFileError:
        written = False
    if written:
        return (
            f"the evolution is done (generation {done} of {total} checkpointed, "
            f"learngene file {gene}) but the final table is not; run the same command "
            "again to make it"
        )
    return (
        f"generation {done} of {total} is checkpointed in {workdir}; run the same "
        "command again to resume (it writes the learngene file and the final table)"
    )


# --------------------------------------------------------------------------- CLI

EVOLVE_FLAGS = (
    Flag(
        "workdir",
        None,
        "where metrics, checkpoints, the learngene file and results go; a rerun resumes "
        "from it (default: runs/<config>, e.g. runs/omniglot_smoke)",
    ),
    QUIET,
)


@cli.command
def main(argv: list[str]) -> int:
    cl = cli.parse_command_line(
        argv,
        prog="python -m gtl_jax.evolve",
        description="Evolve a learngene (Genetic Transfer Learning) and compare "
        "descendants that inherit it with scratch networks on held-out few-shot "
        "episodes.",
        own=EVOLVE_FLAGS,
    )
    c = cl.config
    workdir = pathlib.Path(cl.flags["workdir"] or f"runs/{cli.config_label(cl.spec)}")
    stopping.describe(lambda: stop_message(c, workdir))
    processes = int(c.execution.processes)
    if processes > 1 and not (
        c.execution.distributed or os.environ.get(distributed.CHILD_ENV)
    ):
        # This process only starts the joined ones, after the checks that need no data.
        validate_config(c)
        return distributed.launch_local(processes, ["-m", "gtl_jax.evolve", *argv])
    configure_jax()
    summary = run(c, workdir, quiet=cl.flags["quiet"])
    if jax.process_index() != 0:
        return 0
    print()
    print(summary["table"])
    print(cli.smoke_note(cl.spec), end="")
    print(
        f"\nwall time {summary['total_seconds']:.0f} s (evolution "
        f"{summary['evolution_seconds']:.0f} s); workdir {workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
