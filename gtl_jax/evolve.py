"""``python -m gtl_jax.evolve``: evolve a learngene, then compare its descendants with scratch.

The shell around the pure core: reads the config and flags, loads the data, runs the
generations with a progress bar (on CPU the members' lives in worker processes pinned one per
core, ``LifeWorkers``), writes metrics as JSON lines, checkpoints every generation
(a rerun with the same workdir resumes), writes the best learngene as a learngene file, and ends
with a table of descendants vs scratch on fixed test episodes of the meta-test classes.

Workdir contents: ``config.json``, ``metrics.jsonl`` (and the same scalars as TensorBoard
event files in ``tensorboard/``), ``checkpoints/``, ``learngene/``, ``results.md``,
``results.json``, ``fitness.png``, ``curves.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from gtl_jax import checkpoint, distributed, plots, stopping, tensorboard
from gtl_jax.configs import load_config
from gtl_jax.configs.omniglot import FIELD_HELP
from gtl_jax.data import (
    AUGMENTATIONS,
    DATASETS,
    DataError,
    load_dataset,
    sample_episode,
)
from gtl_jax.descendants import Recipe
from gtl_jax.evolution import SELECTIONS, Evolution, EvolutionConfig
from gtl_jax.executors import STRATEGIES, HostExecutor, Lives, resolve_strategy
from gtl_jax.learngene import make_spec, parameter_share
from gtl_jax.models import MODELS, PRECISIONS, build_model

FITNESS_KEYS = ("fitness_max", "fitness_mean", "fitness_min", "fitness_ci")
# The stream of the final choice's key (re-scoring episodes), folded into the root key.
FINAL_STREAM = 2**31 - 2
# Descendant progress advances by fractions of a step when descendants run one at a time.
PROGRESS_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} steps "
    "[{elapsed}<{remaining}{postfix}]"
)


class ConfigError(ValueError):
    """A config value is impossible; the message names the field."""


# What a command reports as one line and exit status 2 (bad config, data, files).
COMMAND_ERRORS = (
    ConfigError,
    DataError,
    checkpoint.LearngeneFileError,
    checkpoint.CheckpointError,
)


# --------------------------------------------------------------------------- config

# Fields a rerun in the same workdir may change: more generations extend the run; the test
# evaluation and the execution strategy do not change the evolution's trajectory.
RESUMABLE_CHANGES = frozenset(
    {
        "generations",
        "eval_episodes",
        "eval_way",
        "eval_shots",
        "eval_query",
        "eval_seed",
        "eval_every",
        "strategy",
        "data_dir",
        "distributed",
        "processes",
        # Fields of python -m gtl_jax.inherit.
        "methods",
        "heads",
        "inherit_episodes",
        "eval_split",
        "heur_layers",
        "pretrain_steps",
        "pretrain_batch",
        "pretrain_lr",
        "pretrain_weight_decay",
        "workers",
        # The final choice and the study's fields (python -m gtl_jax.study).
        "final_candidates",
        "rescore_episodes",
        "seeds",
        "study_ways",
        "study_episodes",
        "study_methods",
        "transfer_dataset",
    }
)


def parse_shots(value: str) -> tuple[int, ...]:
    try:
        shots = tuple(int(s) for s in str(value).split(",") if s.strip())
    except ValueError:
        raise ConfigError(
            f"eval_shots: {value!r} is not a comma-separated list of ints"
        ) from None
    if not shots or min(shots) < 1:
        raise ConfigError(f"eval_shots: {value!r} must list shot counts >= 1")
    return shots


def model_of(c: ml_collections.ConfigDict, num_classes: int):
    """The config's network (``model``, ``width``, ``precision``) with ``num_classes`` outputs."""
    dtype = PRECISIONS[c.get("precision", "float32")]
    return build_model(c.model, num_classes, width=c.width, dtype=dtype)


def validate_config(
    c: ml_collections.ConfigDict,
    pools: dict | None = None,
    *,
    num_devices: int = 1,
) -> None:
    """Raises ConfigError naming the first impossible field.

    ``num_devices``: the devices the population is sharded over; ``pop_size`` must be a
    multiple of it (refused rather than padded: a padded member would cost a whole network).
    """

    def need(ok: bool, field: str, why: str):
        if not ok:
            raise ConfigError(f"config field {field}={c.get(field)!r}: {why}")

    need(c.dataset in DATASETS, "dataset", f"known datasets: {', '.join(DATASETS)}")
    need(c.model in MODELS, "model", f"known models: {', '.join(sorted(MODELS))}")
    need(
        c.get("precision", "float32") in PRECISIONS,
        "precision",
        f"must be one of {', '.join(PRECISIONS)}",
    )
    need(0 < c.ratio <= 1, "ratio", "must be in (0, 1]")
    need(c.width > 0, "width", "must be > 0")
    for field in (
        "pop_size",
        "tournament_size",
        "generations",
        "life_way",
        "life_batch",
        "num_critics",
        "critic_way",
        "critic_shot",
        "critic_query",
        "eval_episodes",
        "eval_way",
        "eval_query",
        "eval_every",
    ):
        need(int(c[field]) >= 1, field, "must be >= 1")
    for field in ("life_steps", "critic_steps", "steps"):
        need(int(c[field]) >= 0, field, "must be >= 0")
    need(
        c.pop_size % c.tournament_size == 0,
        "pop_size",
        f"must be divisible by tournament_size={c.tournament_size}",
    )
    need(c.mutation_sigma >= 0, "mutation_sigma", "must be >= 0")
    need(0 <= c.mutation_rate <= 1, "mutation_rate", "must be in [0, 1]")
    need(
        c.head in ("random", "zero", "prototype"),
        "head",
        "must be random, zero or prototype",
    )
    need(c.optimizer in ("adam", "sgd"), "optimizer", "must be adam or sgd")
    need(c.batch_norm in ("batch", "frozen"), "batch_norm", "must be batch or frozen")
    need(c.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
    need(int(c.get("processes", 1)) >= 1, "processes", "must be >= 1")
    need(int(c.get("workers", 0)) >= 0, "workers", "must be >= 0")
    need(c.augment in AUGMENTATIONS, "augment", f"must be one of {AUGMENTATIONS}")
    need(c.selection in SELECTIONS, "selection", f"must be one of {SELECTIONS}")
    need(0 <= c.score_decay <= 1, "score_decay", "must be in [0, 1]")
    need(int(c.final_candidates) >= 1, "final_candidates", "must be >= 1")
    need(int(c.rescore_episodes) >= 0, "rescore_episodes", "must be >= 0")
    shots = parse_shots(c.eval_shots)
    if pools is not None:  # only the splits loaded: callers require those they use
        for split, field, way in (
            ("train", "life_way", c.life_way),
            ("val", "critic_way", c.critic_way),
            ("test", "eval_way", c.eval_way),
        ):
            if split not in pools:
                continue
            n = pools[split].num_classes
            need(
                way <= n, field, f"more ways than the {n} classes of the {split} split"
            )
        per_class = pools["test"].images_per_class if "test" in pools else np.inf
        need(
            max(shots) + c.eval_query <= per_class,
            "eval_query",
            f"max(eval_shots) + eval_query must be <= {per_class} images per class",
        )
        per_class = pools["val"].images_per_class if "val" in pools else np.inf
        need(
            c.critic_shot + c.critic_query <= per_class,
            "critic_query",
            f"critic_shot + critic_query must be <= {per_class} images per class",
        )


def from_config(cls: type, c: ml_collections.ConfigDict) -> Any:
    """A dataclass of the library built from the config fields of the same names."""
    return cls(**{field.name: c[field.name] for field in dataclasses.fields(cls)})


def descendant_recipe(c: ml_collections.ConfigDict) -> Recipe:
    """The ``Recipe`` of a config: how its descendants are fine-tuned.

    Args:
      c: a config (``gtl_jax.configs.load_config``, e.g. ``load_config("omniglot")``) or any
        mapping with the fields ``head``, ``optimizer``, ``learning_rate``, ``steps``,
        ``eval_every`` and ``batch_norm``.

    Returns:
      ``Recipe`` with those fields: the one the command line's final table and
      ``python -m gtl_jax.inherit`` give every descendant (a learning curve every
      ``eval_every`` steps). ``Recipe()`` is the default config's.
    """
    return from_config(Recipe, c)


def require_splits(
    pools: dict, splits: tuple[str, ...], c: ml_collections.ConfigDict, use: str
) -> None:
    """Raises DataError naming the first of ``splits`` the loaded dataset lacks (a user's
    npz may list only some splits) and what ``use`` needed it."""
    for split in splits:
        if split not in pools:
            where = f" at {c.data_dir}" if c.data_dir else ""
            raise DataError(
                f"dataset {c.dataset!r}{where} has no {split!r} split, which the {use} "
                f"needs (it has: {', '.join(pools) or 'none'})"
            )


def critic_recipe(c: ml_collections.ConfigDict) -> Recipe:
    """Critics fine-tune like descendants; only their final accuracy is needed (fitness)."""
    return dataclasses.replace(
        descendant_recipe(c), steps=c.critic_steps, eval_every=max(1, c.critic_steps)
    )


# --------------------------------------------------------------------------- evaluation


def fixed_episodes(
    key: jax.Array,
    images: jax.Array,
    *,
    episodes: int,
    n_way: int,
    k_shot: int,
    n_query: int,
):
    """Fixed test episodes (leading axis E) and one descendant key per episode."""
    episode_key, init_key = jax.random.split(key)
    sample = jax.jit(
        jax.vmap(
            lambda k: sample_episode(
                k, images, n_way=n_way, k_shot=k_shot, n_query=n_query
            )
        )
    )
    return sample(jax.random.split(episode_key, episodes)), jax.random.split(
        init_key, episodes
    )


def make_evolution(c: ml_collections.ConfigDict, pools: dict) -> Evolution:
    """The config's ``Evolution`` on the loaded class pools."""
    train, val = (jnp.asarray(pools[s].images) for s in ("train", "val"))
    life_model = model_of(c, c.life_way)
    return Evolution(
        life_model,
        model_of(c, c.critic_way),
        make_spec(life_model, c.ratio, pools["train"].image_shape[-1]),
        from_config(EvolutionConfig, c),
        critic_recipe(c),
        train,
        val,
    )


def life_workers(c: ml_collections.ConfigDict) -> int:
    """Worker processes for the members' lives (``workers``; 0: one per CPU core).

    Only in one process with one device and the loop strategy: several devices or joined
    processes already share the population (``gtl_jax.population``), and vmap runs it as one
    program. At most one per member.
    """
    if (
        jax.process_count() > 1
        or jax.device_count() > 1
        or resolve_strategy(c.strategy) != "loop"
    ):
        return 1
    return min(distributed.default_workers(int(c.workers)), int(c.pop_size))


# One Evolution per life worker process, built by the pool's initializer.
_WORKER_EVOLUTION: HostExecutor | None = None


def _start_life_worker(config_json: str) -> None:
    global _WORKER_EVOLUTION
    configure_jax()
    c = ml_collections.ConfigDict(json.loads(config_json))
    pools = load_dataset(c.dataset, c.data_dir or None, image_size=c.image_size)
    _WORKER_EVOLUTION = HostExecutor(make_evolution(c, pools), c.strategy)


def _life_job(
    key_data, learngenes, lo: int, hi: int, progress, critic_key_data
) -> Lives:
    evo = _WORKER_EVOLUTION
    share = (
        hi - lo
    ) / evo.evo.config.pop_size  # progress counts steps of the whole population
    critic_key = None
    if critic_key_data is not None:
        critic_key = jax.random.wrap_key_data(critic_key_data)
    life = evo.lives(
        jax.random.wrap_key_data(key_data),
        jax.tree.map(jnp.asarray, learngenes),
        lo,
        hi,
        on_step=lambda n: progress.put(n * share),
        critic_key=critic_key,
    )
    return jax.device_get(life)


class LifeWorkers:
    """``Evolution.lives`` of the whole population, in blocks of members computed by worker
    processes pinned one per core (``Evolution.generation``'s ``workers``).

    On CPU XLA uses two cores poorly for these small networks: at the default sizes one
    pinned process trains a member about as fast as one process on both cores
    (``benchmarks/results/default_size.md``), so two of them about double the rate (README,
    "Both cores: worker processes"). Every block draws the keys, tasks and critic episodes of
    the whole population, so a member's numbers do not depend on its block or on the number
    of workers (tested); they differ at float rounding from one process on both cores, which
    sums in another order.
    """

    def __init__(self, c: ml_collections.ConfigDict, workers: int):
        self.size, self.workers = int(c.pop_size), workers
        self._pool = distributed.worker_pool(
            workers, _start_life_worker, (c.to_json(),)
        )

    def __enter__(self) -> LifeWorkers:
        self.pool, self.progress = self._pool.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._pool.__exit__(*exc)

    def __call__(self, key, learngenes, on_step=None, critic_key=None) -> Lives:
        bounds = distributed.block_bounds(self.size, self.workers)
        genes = distributed.to_host(learngenes)
        key_data = np.asarray(jax.random.key_data(key))
        critic_key_data = None
        if critic_key is not None:
            critic_key_data = np.asarray(jax.random.key_data(critic_key))
        futures = [
            self.pool.submit(
                _life_job,
                key_data,
                jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], genes),
                int(lo),
                int(hi),
                self.progress,
                critic_key_data,
            )
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        blocks = distributed.wait_all(futures, self.progress, on_step)
        join = lambda *xs, axis=0: np.concatenate(xs, axis=axis)  # noqa: E731
        return Lives(
            jax.tree.map(
                lambda *xs: jnp.asarray(join(*xs)), *[b.trained for b in blocks]
            ),
            join(*[b.life_losses for b in blocks], axis=1),
            join(*[b.diverged for b in blocks]),
            join(*[b.fitness for b in blocks]),
            join(*[b.instinct for b in blocks]),
        )


def evaluate(
    c: ml_collections.ConfigDict, workdir: pathlib.Path, *, quiet: bool
) -> dict:
    """Learngene descendants vs scratch on the same seeded test episodes, per shot setting.

    The learngene and scratch jobs of the evidence suite (``gtl_jax.inherit.Suite``) on the
    learngene file just written, with ``eval_episodes`` episodes and the config's head; the
    jobs run in ``workers`` processes (one per core on CPU). With joined processes
    (``processes``, ``distributed``) each process runs its block of every job's descendants.
    """
    from gtl_jax import inherit  # imported here: inherit builds on this module

    e = ml_collections.ConfigDict(c.to_dict())
    e.methods, e.heads = "learngene,scratch", c.head
    e.inherit_episodes, e.eval_split = c.eval_episodes, "test"
    distributed.barrier("learngene written")  # by process 0
    path = workdir / "learngene"
    workers = inherit.resolve_workers(e) if jax.process_count() == 1 else 1
    suite = inherit.Suite(e, path, workdir) if workers == 1 else None
    jobs = [(s, m) for s in parse_shots(c.eval_shots) for m in ("learngene", "scratch")]
    with tqdm(
        total=len(jobs) * c.steps,
        desc="descendants",
        disable=quiet,
        bar_format=PROGRESS_FORMAT,
    ) as bar:
        bar.set_postfix_str(f"{workers} worker process(es)")
        done = inherit.run_jobs(suite, jobs, workers, e.to_json(), path, workdir, bar)
    return {
        f"{shot}-shot/{method}": done[shot, method]["rows"][0]
        for shot, method in sorted(done)
    }


def smoke_note(config: str) -> str:
    """A line saying a smoke variant's numbers check the pipeline ('' for other configs)."""
    if config.partition(":")[2] != "smoke":
        return ""
    return (
        "\n(smoke config: toy sizes that check the whole pipeline runs; these numbers "
        "measure nothing)\n"
    )


def generation_line(m: dict, generations: int) -> str:
    """One log line per generation: fitness, divergence and time."""
    return (
        f"generation {m['generation']}/{generations}: fitness max {m['fitness_max']:.3f}, "
        f"mean {m['fitness_mean']:.3f} ± {m.get('fitness_ci', float('nan')):.3f}, "
        f"diverged {m['diverged']}, {m['seconds']:.1f} s"
    )


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


def results_table(c, results: dict, share: dict) -> str:
    shots = parse_shots(c.eval_shots)
    recipe = descendant_recipe(c)
    header = "| method | params transferred |"
    rule = "| --- | --- |"
    for shot in shots:
        header += f" instinct {shot}-shot | {shot}-shot |"
        rule += " --- | --- |"
    lines = [
        f"{c.eval_way}-way, {c.eval_query} queries per class, {c.eval_episodes} test episodes "
        f"(seed {c.eval_seed}), {c.dataset} meta-test classes; {c.model} x{c.width:g}; "
        f"descendants: {recipe.describe()}; mean and 95% CI (%)",
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


# --------------------------------------------------------------------------- CLI


def build_parser(defaults: ml_collections.ConfigDict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gtl_jax.evolve",
        description="Evolve a learngene (Genetic Transfer Learning) and compare descendants that "
        "inherit it with scratch networks on held-out few-shot episodes. Every config field is "
        "also a flag; defaults shown are those of the omniglot config.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="omniglot",
        help="config NAME[:VARIANT] from gtl_jax/configs, or PATH.py[:ARG]",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where metrics, checkpoints, the learngene file and results go; a "
        "rerun resumes from it (default: runs/<config>)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    group = parser.add_argument_group("config fields (override the chosen config)")
    for field, value in defaults.items():
        kind = {bool: _bool, int: int, float: float}.get(type(value), str)
        group.add_argument(
            f"--{field}",
            type=kind,
            default=None,
            help=f"{FIELD_HELP.get(field, field)} (default: {value!r})",
        )
    return parser


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def resolve_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    c = load_config(args.config)
    for field in c:
        value = getattr(args, field, None)
        if value is not None:
            c[field] = value
    if not c.data_dir:
        c.data_dir = os.environ.get("GTL_DATA_DIR", "")
    return c


# XLA CPU's concurrency-optimised scheduler (on by default) orders a program so that independent
# ops run side by side; on 2 cores that competes with the ops' own threads. With it off, a
# VGG11 train step ran 1.35x faster at width 1/4 and 1.14x at width 1, outputs bit-identical
# (benchmarks/results/cpu_explore.md). XLA aborts on a flag it does not know, so the flags are
# given only to the jaxlib versions they were checked on.
CPU_XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
CPU_XLA_FLAGS_JAXLIB = ((0, 10), (0, 11))  # [from, to) as (major, minor)


def cpu_xla_flags(xla_flags: str, jaxlib_version: str) -> str:
    """``xla_flags`` (the ``XLA_FLAGS`` value) with CPU_XLA_FLAGS added, unless this jaxlib
    is outside CPU_XLA_FLAGS_JAXLIB or the flag is set already (the user's value wins)."""
    major_minor = tuple(int(v) for v in jaxlib_version.split(".")[:2])
    low, high = CPU_XLA_FLAGS_JAXLIB
    if not low <= major_minor < high:
        return xla_flags
    for flag in CPU_XLA_FLAGS:
        if flag.split("=")[0] not in xla_flags:
            xla_flags = f"{xla_flags} {flag}".strip()
    return xla_flags


def configure_jax() -> None:
    """Process-wide JAX settings of the command line; call before JAX first uses a device.

    - Non-partitionable threefry: with the partitionable form (JAX's default) XLA CPU took
      7.5 s to compile a VGG11 x1/8 init, against 2.6 s without (benchmarks/results/).
      Random streams are fixed by this setting, so runs stay reproducible.
    - A persistent compilation cache of every program, however quick to compile: a second run
      (or the tests) skips most compilation. Each worker process compiles the programs it
      runs, and a default run compiles about 240 small ones per process: caching those too
      cut the worker processes' XLA compile time from 13.3 s to 2.9 s.
    - ``CPU_XLA_FLAGS`` added to ``XLA_FLAGS`` (inherited by worker processes): faster on CPU,
      same numbers.
    """
    import jaxlib  # noqa: PLC0415 (only its version)

    os.environ["XLA_FLAGS"] = cpu_xla_flags(
        os.environ.get("XLA_FLAGS", ""), jaxlib.__version__
    )
    jax.config.update("jax_threefry_partitionable", False)
    path = os.environ.get(
        "GTL_JAX_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "gtl_jax" / "xla")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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

    Several processes (``distributed``): every process runs the same program on its own
    devices and loads the whole class pools (they are small, and every device samples
    episodes from all classes); only process 0 writes ``config.json``, metrics, plots, the
    learngene file and results; checkpoints are written by Orbax, which coordinates the
    processes.
    """
    start = time.perf_counter()
    joined = c.get("distributed", False) or os.environ.get(distributed.CHILD_ENV)
    if joined and not jax.distributed.is_initialized():
        distributed.initialize()
    writer = jax.process_index() == 0
    quiet = quiet or not writer
    validate_config(c, num_devices=jax.device_count())
    pools = load_dataset(c.dataset, c.data_dir or None, image_size=c.image_size)
    require_splits(
        pools, ("train", "val", "test"), c, "evolution: lifetimes, critics, final table"
    )
    validate_config(c, pools, num_devices=jax.device_count())
    config_path = workdir / "config.json"
    config_json = json.loads(c.to_json())
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        differ = {
            k
            for k in set(previous) | set(config_json)
            if previous.get(k) != config_json.get(k) and k not in RESUMABLE_CHANGES
        }
        if differ:
            raise ConfigError(
                f"workdir {workdir} holds a run with another config (fields differ: "
                f"{', '.join(sorted(differ))}); use another --workdir or the same config"
            )

    image_shape = pools["train"].image_shape
    evo = make_evolution(c, pools)
    executor = HostExecutor(evo, c.strategy)
    spec, ec, critic_model = evo.spec, evo.config, evo.critic_model
    init_key, root_key = jax.random.split(jax.random.key(c.seed))

    # Process 0's view: the others may look after it has created the directory.
    # One manager per run: each one opened starts removing a killed save's temporary
    # directory in a background thread, and two of them race to delete the same one.
    manager = restored = None
    if distributed.from_process_0((workdir / "checkpoints").is_dir()):
        manager = checkpoint.state_manager(workdir)
        try:
            template = jax.eval_shape(evo.init, init_key)
            restored = checkpoint.restore_state(
                manager, template, evo.state_shardings(template)
            )
        except BaseException:  # a damaged checkpoint, a Ctrl-C: Orbax's work ends first
            checkpoint.close_manager(manager)
            raise
    # The checks are done: from here on the workdir is written.
    workdir.mkdir(parents=True, exist_ok=True)
    if manager is None:
        manager = checkpoint.state_manager(workdir)
    if writer:
        config_path.write_text(json.dumps(config_json, indent=2, sort_keys=True))
    metrics_path = workdir / "metrics.jsonl"
    history = []
    if restored is None:
        state = evo.init(init_key)
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
    steps_per_generation = ec.life_steps + c.critic_steps
    workers = life_workers(c) if int(state.generation) < c.generations else 1
    with (
        contextlib.ExitStack() as stack,
        tqdm(
            total=c.generations * steps_per_generation,
            desc="evolution",
            disable=quiet,
            initial=int(state.generation) * steps_per_generation,
            bar_format=PROGRESS_FORMAT,  # whole steps (workers report fractions)
        ) as bar,
    ):
        stack.callback(checkpoint.close_manager, manager)  # also when one raises
        events = None
        if writer and int(state.generation) < c.generations:  # closed by the stack
            events = stack.enter_context(
                tensorboard.EventWriter(
                    workdir / "tensorboard", start_step=int(state.generation) + 1
                )
            )
        pool = None
        if workers > 1:
            pool = stack.enter_context(LifeWorkers(c, workers))
            bar.set_description(f"evolution ({workers} worker processes)")
        while int(state.generation) < c.generations:
            t = time.perf_counter()
            state, m = executor.generation(
                root_key, state, on_step=bar.update, workers=pool
            )
            m["seconds"] = time.perf_counter() - t
            bar.set_postfix_str(
                f"best={m['fitness_max']:.3f}, mean={m['fitness_mean']:.3f}"
            )
            # Workers report fractions of steps: snap to the whole generation's count.
            bar.n = int(state.generation) * steps_per_generation
            bar.refresh()
            if not quiet:
                bar.write(generation_line(m, c.generations))
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
                state,
                {"generation": int(state.generation)},
            )
    evolve_seconds = time.perf_counter() - evolve_start

    shapes = jax.eval_shape(
        lambda k: critic_model.init(k, jnp.zeros((1, *image_shape)), train=False),
        jax.random.key(0),
    )
    share = parameter_share(spec, shapes["params"])
    final, choice = executor.choose_final(
        jax.random.fold_in(root_key, FINAL_STREAM),
        state,
        candidates=int(c.final_candidates),
        episodes=int(c.rescore_episodes),
    )
    final_fitness = choice.get("rescored", [float(state.fitness[final])])
    if "candidates" in choice:
        final_fitness = final_fitness[choice["candidates"].index(final)]
    checkpoint.save_learngene(  # by process 0 only
        workdir / "learngene",
        jax.tree.map(lambda x: distributed.to_host(x)[final], state.trained),
        {
            "model": {"name": c.model, "width": c.width},
            "spec": spec.to_json(),
            "image_shape": list(image_shape),
            "normalisation": "uint8 / 255, ink = 1",
            "dataset": {
                "name": c.dataset,
                "splits": {s: pools[s].num_classes for s in pools},
            },
            "generation": int(state.generation),
            "fitness": float(np.asarray(final_fitness).ravel()[0]),
            "choice": choice,
            "parameter_share": share,
            "config": config_json,
            # What the learngene cost, and its fitness over generations (for plots).
            "cost": {
                "generations": int(state.generation),
                "lifetime_steps": int(state.generation) * c.pop_size * c.life_steps,
                "critic_steps": int(state.generation)
                * c.pop_size
                * c.num_critics
                * c.critic_steps,
                "seconds": sum(m.get("seconds", 0.0) for m in history),
            },
            "history": [
                {k: m[k] for k in ("generation", *FITNESS_KEYS) if k in m}
                for m in history
            ],
        },
    )
    if writer and history:
        plots.plot_fitness(history, workdir / "fitness.png")
    if not final_table:
        return {"evolution_seconds": evolve_seconds, "history": history}

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
        add_curve(curves, f"{c.eval_way}-way {r['shot']}-shot", r)
    if writer:
        (workdir / "results.md").write_text(table + "\n")
        (workdir / "results.json").write_text(json.dumps(summary, indent=1))
        plots.plot_curves(curves, workdir / "curves.png")
    summary["table"] = table
    return summary


def stop_message(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> str:
    """What an interrupted run left in ``workdir`` and how to go on (the line after
    ``interrupted: ``), read from the disk."""
    done, total = checkpoint.latest_step(workdir), int(c.generations)
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


@stopping.command
def main(argv: list[str] | None = None) -> int:
    defaults = load_config("omniglot")
    args = build_parser(defaults).parse_args(argv)
    try:
        c = resolve_config(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir or f"runs/{args.config.replace(':', '_')}")
    stopping.describe(lambda: stop_message(c, workdir))
    processes = int(c.get("processes", 1))
    if processes > 1 and not (c.distributed or os.environ.get(distributed.CHILD_ENV)):
        # This process only starts the joined ones, after the checks that need no data.
        try:
            validate_config(c, num_devices=processes)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        argv = sys.argv[1:] if argv is None else list(argv)
        return distributed.launch_local(processes, ["-m", "gtl_jax.evolve", *argv])
    configure_jax()
    try:
        summary = run(c, workdir, quiet=args.quiet)
    except COMMAND_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() != 0:
        return 0
    print()
    print(summary["table"])
    print(smoke_note(args.config), end="")
    print(
        f"\nwall time {summary['total_seconds']:.0f} s (evolution "
        f"{summary['evolution_seconds']:.0f} s); workdir {workdir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
