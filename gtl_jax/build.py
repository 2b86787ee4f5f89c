"""What a config builds: networks, recipes, class pools, fixed episodes, the evolution and the
executor that drives it (in this process, or in worker processes pinned one per core), and
the JAX settings of the commands (``configure_jax``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gtl_jax import distributed
from gtl_jax.config import ConfigError, int_list
from gtl_jax.data import STREAMS, DataError, PoolStream, load_dataset, sample_episode
from gtl_jax.descendants import Recipe
from gtl_jax.evolution import Evolution, EvolutionConfig
from gtl_jax.executors import HostExecutor, resolve_strategy
from gtl_jax.executors.workers import LifeWorkers
from gtl_jax.learngene import ViTSpec, make_spec
from gtl_jax.models import PRECISIONS, VITS, build_model
from gtl_jax.pretrain import PretrainConfig


def model_of(c: ml_collections.ConfigDict, num_classes: int, spec: Any = None):
    """The config's network (``model.name``, ``model.width``, ``model.precision``,
    ``model.forms``, ``model.patch``) with ``num_classes`` outputs.

    A ViT with ``model.closed_norm`` normalises the learngene's dims apart
    (``gtl_jax.models.ViT.gene_dims``), so the circuit is exactly closed: the dims of
    ``spec`` (a ``ViTSpec``, e.g. of the learngene a descendant inherits), else those the
    config's ``model.ratio`` gives this network."""
    m = c.model
    model = build_model(
        m.name,
        num_classes,
        width=m.width,
        dtype=PRECISIONS[m.precision],
        forms=m.get("forms", "auto"),
        patch=int(m.get("patch", 0)),
    )
    if m.name in VITS and m.get("closed_norm", True):
        if not isinstance(spec, ViTSpec):
            spec = make_spec(model, m.ratio, 1)
        model = model.clone(gene_dims=spec.k_dim)
    return model


def descendant_recipe(c: ml_collections.ConfigDict) -> Recipe:
    """The ``Recipe`` of a config: how its descendants are fine-tuned.

    Args:
      c: a config (``gtl_jax.experiment.load_config("omniglot")``, or the ``config`` of a
        learngene file's metadata) whose ``descendants`` section holds the fields ``head``,
        ``optimizer``, ``learning_rate``, ``steps``, ``eval_every`` and ``batch_norm``.

    Returns:
      ``Recipe(**c["descendants"])``: the recipe the command line's final table and
      ``python -m gtl_jax.inherit`` give every descendant (a learning curve every
      ``eval_every`` steps). ``Recipe()`` is the default config's.
    """
    return Recipe(**c["descendants"])


def critic_recipe(c: ml_collections.ConfigDict) -> Recipe:
    """Critics fine-tune like descendants; only their final accuracy is needed (fitness)."""
    steps = c.evolution.critic_steps
    return dataclasses.replace(
        descendant_recipe(c), steps=steps, eval_every=max(1, steps)
    )


def pretrain_config(c: ml_collections.ConfigDict) -> PretrainConfig:
    """The ``PretrainConfig`` of the suite's baselines (``suite.pretrain_*``)."""
    return PretrainConfig(
        **{f.name: c.suite[f.name] for f in dataclasses.fields(PretrainConfig)}
    )


def eval_shots(c: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The shot settings of ``evaluation.eval_shots``."""
    try:
        return int_list(c.evaluation.eval_shots, "eval_shots")
    except ValueError as e:
        raise ConfigError(f"config field evaluation.{e}") from None


def require_splits(
    pools: dict, splits: tuple[str, ...], c: ml_collections.ConfigDict, use: str
) -> None:
    """Raises DataError naming the first of ``splits`` the loaded dataset lacks (a user's
    npz may list only some splits) and what ``use`` needed it."""
    for split in splits:
        if split not in pools:
            where = f" at {c.data.data_dir}" if c.data.data_dir else ""
            raise DataError(
                f"dataset {c.data.dataset!r}{where} has no {split!r} split, which the "
                f"{use} needs (it has: {', '.join(pools) or 'none'})"
            )


def data_options(c: ml_collections.ConfigDict) -> dict:
    """What a streamed dataset's loader and stream take beyond the folder and image size
    (``DataConfig``'s class split and pool sizes, and the run's seed); ``{}`` for the
    others."""
    d = c.data
    if d.dataset not in STREAMS:
        return {}
    return {
        "classes": d.classes,
        "classes_per_generation": int(d.classes_per_generation),
        "images_per_class": int(d.images_per_class),
        "eval_images_per_class": int(d.eval_images_per_class),
        "seed": int(c.seed),
    }


def load_pools(c: ml_collections.ConfigDict) -> dict:
    """The config's class pools (``data`` section); for a streamed dataset, its train
    split is generation 0's lifetime pool."""
    d = c.data
    return load_dataset(
        d.dataset, d.data_dir or None, image_size=d.image_size, **data_options(c)
    )


def pool_stream(c: ml_collections.ConfigDict) -> PoolStream | None:
    """The pools that change every generation (``{split: ClassPool}``, prepared one
    generation ahead), for a streamed dataset (``gtl_jax.data.STREAMS``); None for the
    others, whose pools are the evolution's own all along."""
    d = c.data
    if d.dataset not in STREAMS:
        return None
    return STREAMS[d.dataset](
        d.data_dir or None,
        generations=int(c.evolution.generations),
        image_size=int(d.image_size),
        **data_options(c),
    )


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
    sampled = sample_episodes(
        jax.random.split(episode_key, episodes),
        images,
        n_way=n_way,
        k_shot=k_shot,
        n_query=n_query,
    )
    return sampled, jax.random.split(init_key, episodes)


# The pool is an argument: closed over, it was a constant of the program (10 MB for
# Omniglot's test split), which XLA copied into every compilation and tried to fold.
@functools.partial(jax.jit, static_argnames=("n_way", "k_shot", "n_query"))
def sample_episodes(
    keys: jax.Array, images: jax.Array, *, n_way: int, k_shot: int, n_query: int
):
    """One episode per key (``sample_episode``, vmapped): leading axis E."""
    return jax.vmap(
        lambda k: sample_episode(k, images, n_way=n_way, k_shot=k_shot, n_query=n_query)
    )(keys)


# --------------------------------------------------------------------------- JAX settings


# XLA CPU's concurrency-optimised scheduler (on by default) orders a program so that independent
# ops run side by side; on 2 cores that competes with the ops' own threads. With it off, a
# VGG11 train step ran 1.35x faster at width 1/4 and 1.14x at width 1, outputs bit-identical
# (docs/cpu/forms_and_flags.md). XLA aborts on a flag it does not know, so the flags are
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

    - Non-partitionable threefry: with the partitionable form (JAX's default, and
      big_vision's choice, so that a sharded array's random bits do not depend on its
      sharding) XLA CPU took 7.5 s to compile a VGG11 x1/8 init, against 2.6 s without
      (docs/cpu/default_size.md). The library never draws one array sharded over devices:
      every member draws from its own key, split before the members are sharded
      (``Evolution.ask``), so its bits are the same on any device count either way
      (tests/scripts/sharded_evolution.py checks them on 8 devices against one). Random
      streams are fixed by this setting, so runs and their published numbers stay
      reproducible.
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


# --------------------------------------------------------------------------- the evolution
# Building an Evolution and the executor that drives it (gtl_jax.executors): in this
# process, or in worker processes pinned one per core.


def make_evolution(c: ml_collections.ConfigDict, pools: dict) -> Evolution:
    """The config's ``Evolution`` on the loaded class pools."""
    train, val = (jnp.asarray(pools[s].images) for s in ("train", "val"))
    life_model = model_of(c, c.evolution.life_way)
    return Evolution(
        life_model,
        model_of(c, c.evolution.critic_way),
        make_spec(life_model, c.model.ratio, pools["train"].image_shape[-1]),
        EvolutionConfig(**c.evolution),
        critic_recipe(c),
        train,
        val,
    )


def make_executor(c: ml_collections.ConfigDict, pools: dict) -> HostExecutor:
    """The config's evolution and the executor that runs its generations
    (``execution.strategy``: the host loop on CPU, the pure jitted generation with vmap)."""
    return HostExecutor(make_evolution(c, pools), c.execution.strategy)


def worker_executor(config_json: str) -> HostExecutor:
    """``make_executor`` in a worker process, from the config as JSON (loads the data)."""
    configure_jax()
    c = ml_collections.ConfigDict(json.loads(config_json))
    return make_executor(c, load_pools(c))


def start_life_workers(c: ml_collections.ConfigDict, workers: int) -> LifeWorkers:
    """``workers`` processes computing the members' lives (``HostExecutor.generation``'s
    ``workers``); use as a context manager."""
    return LifeWorkers(
        worker_executor, (c.to_json(),), int(c.evolution.pop_size), workers
    )


def life_workers(c: ml_collections.ConfigDict) -> int:
    """Worker processes for the members' lives (``execution.workers``; 0: one per CPU core).

    Only in one process with one device and the loop strategy: several devices or joined
    processes already share the population (``gtl_jax.executors.population_map``), and vmap
    runs it as one program. At most one per member. One for a streamed dataset: each
    worker would have to decode every generation's pools again.
    """
    if (
        c.data.dataset in STREAMS
        or jax.process_count() > 1
        or jax.device_count() > 1
        or resolve_strategy(c.execution.strategy) != "loop"
    ):
        return 1
    return min(
        distributed.default_workers(int(c.execution.workers)), int(c.evolution.pop_size)
    )
