"""The experiment layer: what the three commands share, below all of them.

``python -m gtl_jax.evolve``, ``python -m gtl_jax.inherit`` and ``python -m gtl_jax.study``
read one nested ``ml_collections`` config (``configs/omniglot.py`` at the top of the
repository, installed as the package ``gtl_jax.configs``) whose sections map onto dataclasses:

- ``seed``: the evolution's seed.
- ``data``: ``DataConfig`` (dataset, data_dir, image_size; a streamed dataset's class split
  and pool sizes).
- ``model``: ``ModelConfig`` (name, width, precision, ratio: the learngene ratio).
- ``evolution``: ``gtl_jax.evolution.EvolutionConfig``.
- ``descendants``: ``gtl_jax.descendants.Recipe`` (how every descendant is fine-tuned).
- ``evaluation``: ``EvaluationConfig`` (the final table's fixed test episodes).
- ``suite``: ``SuiteConfig`` (the evidence suite of inherit and study; its ``pretrain_*``
  fields are ``gtl_jax.pretrain.PretrainConfig``'s).
- ``execution``: ``ExecutionConfig`` (strategy, worker processes, joined processes).

Each section is built from ``dataclasses.asdict`` of its dataclass, so every default is
written once, in the dataclass; each dataclass checks its own fields (``ValueError
"field=value: why"``) and ``experiment_of`` turns that into one ``ConfigError`` line naming
``section.field``. ``validate_config`` adds only the checks that need the data or two
sections.

Also here: the command line (``parse_command_line``: absl flags with
``ml_collections.config_flags``, ``--config=configs/omniglot.py:smoke --config.seed=3``),
the JAX settings of the commands (``configure_jax``), fixed test episodes, files written
atomically, and the code that builds and drives an evolution in worker processes
(``make_evolution``, ``LifeWorkers``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gtl_jax import checkpoint, distributed
from gtl_jax.data import (
    DATASETS,
    STREAMS,
    DataError,
    PoolStream,
    imagenet,
    load_dataset,
    sample_episode,
)
from gtl_jax.data.digits import load_digits
from gtl_jax.descendants import HEADS, Recipe
from gtl_jax.evolution import Evolution, EvolutionConfig
from gtl_jax.executors import STRATEGIES, HostExecutor, resolve_strategy
from gtl_jax.executors.workers import LifeWorkers
from gtl_jax.learngene import ViTSpec, make_spec
from gtl_jax.models import FORMS, MODELS, PRECISIONS, VITS, build_model
from gtl_jax.pretrain import PretrainConfig

FITNESS_KEYS = ("fitness_max", "fitness_mean", "fitness_min", "fitness_ci")
# Descendant progress advances by fractions of a step when descendants run one at a time.
PROGRESS_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} steps "
    "[{elapsed}<{remaining}{postfix}]"
)


class ConfigError(ValueError):
    """A config value is impossible; the message names the field (``section.field``)."""


# What a command reports as one line and exit status 2 (bad config, data, files).
COMMAND_ERRORS = (
    ConfigError,
    DataError,
    checkpoint.LearngeneFileError,
    checkpoint.CheckpointError,
)

# The evidence suite's methods (python -m gtl_jax.inherit) and the study's.
METHODS = (
    "learngene",
    "scratch",
    "pretrain-full",
    "pretrain-circuit",
    "heur-lg",
    "proto-frozen",
)
STUDY_METHODS = (
    "learngene",
    "no-selection",
    "score-selection",
    "untrained-circuit",
    "pretrain-circuit-eq",
    "pretrain-closed-eq",
    "scratch",
    "pretrain-full",
)
# The study's second dataset: name -> loader ("": none).
TRANSFER_DATASETS = {"": None, "digits": load_digits}


# --------------------------------------------------------------------------- sections


def _need(obj: Any, ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ValueError(f"{field}={getattr(obj, field)!r}: {why}")


def int_list(value: str, field: str = "value") -> tuple[int, ...]:
    """``"1,5"`` -> ``(1, 5)``; ValueError ``field=value: why`` if it is not that."""
    try:
        values = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"{field}={value!r}: not a comma-separated list of ints"
        ) from None
    if not values:
        raise ValueError(f"{field}={value!r}: empty")
    return values


def name_list(value: str, field: str, known: Sequence[str]) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each one of ``known``."""
    values = tuple(v.strip() for v in str(value).split(",") if v.strip())
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise ValueError(
            f"{field}={value!r}: unknown {unknown or 'empty'}; known: {', '.join(known)}"
        )
    return values


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The images: ``dataset`` (a key of ``gtl_jax.data.DATASETS``), its folder or file
    (``data_dir``; empty: ``$GTL_DATA_DIR`` or the dataset's default place) and the side
    ``image_size`` images are resized to.

    The datasets streamed generation by generation (``gtl_jax.data.STREAMS``: imagenet)
    also read: ``classes`` (train,val,test class counts of the class split),
    ``classes_per_generation`` and ``images_per_class`` (a generation's lifetime pool), and
    ``eval_images_per_class`` (the critics' and the downstream pools); the others ignore
    them. Their defaults are ImageNet-1K's (``gtl_jax.data.imagenet``)."""

    dataset: str = "omniglot"
    data_dir: str = ""
    image_size: int = 28
    classes: str = imagenet.CLASSES
    classes_per_generation: int = imagenet.CLASSES_PER_GENERATION
    images_per_class: int = imagenet.IMAGES_PER_CLASS
    eval_images_per_class: int = imagenet.EVAL_IMAGES_PER_CLASS

    def __post_init__(self):
        _need(
            self,
            self.dataset in DATASETS,
            "dataset",
            f"known datasets: {', '.join(DATASETS)}",
        )
        _need(self, int(self.image_size) >= 1, "image_size", "must be >= 1")
        imagenet.parse_classes(self.classes)  # ValueError "classes=...: why"
        for field in (
            "classes_per_generation",
            "images_per_class",
            "eval_images_per_class",
        ):
            _need(self, int(getattr(self, field)) >= 1, field, "must be >= 1")
        _need(
            self,
            self.classes_per_generation <= imagenet.parse_classes(self.classes)[0],
            "classes_per_generation",
            f"more than the evolution classes of classes={self.classes!r}",
        )

    @property
    def streamed(self) -> bool:
        """Whether the lifetime pools change every generation (``STREAMS``)."""
        return self.dataset in STREAMS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: architecture ``name`` (a key of ``gtl_jax.models.MODELS``), ``width``
    multiplier, computation ``precision``, the learngene ``ratio`` r (each conv layer's
    gene owns round(r * C) output channels) and the layers' ``forms`` (``"cpu"``: the forms
    measured faster on XLA CPU; ``"xla"``: plain ``lax.conv`` and ``max_pool``; ``"auto"``:
    ``"cpu"`` on the CPU backend, ``"xla"`` on GPU/TPU); for ViTs the ``patch`` side (0:
    the model's own) and ``closed_norm`` (the learngene's dims normalised apart, so its
    circuit is exactly closed; ``gtl_jax.models.ViT.gene_dims``)."""

    name: str = "vgg11"
    width: float = 0.25
    precision: str = "float32"
    ratio: float = 0.45
    forms: str = "auto"
    patch: int = 0
    closed_norm: bool = True

    def __post_init__(self):
        _need(
            self,
            self.name in MODELS,
            "name",
            f"known models: {', '.join(sorted(MODELS))}",
        )
        _need(self, self.width > 0, "width", "must be > 0")
        _need(
            self,
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {', '.join(PRECISIONS)}",
        )
        _need(self, 0 < self.ratio <= 1, "ratio", "must be in (0, 1]")
        _need(self, self.forms in FORMS, "forms", f"must be one of {', '.join(FORMS)}")
        _need(self, self.patch >= 0, "patch", "must be >= 0 (0: the model's own)")
        _need(
            self,
            not self.patch or self.name in VITS,
            "patch",
            f"only ViTs ({', '.join(VITS)}) have patches; 0 for {self.name}",
        )


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """The final table of ``python -m gtl_jax.evolve``: ``eval_episodes`` fixed test episodes
    per shot setting (``eval_shots``, comma-separated), ``eval_way``-way with ``eval_query``
    queries per class, drawn with ``eval_seed`` (as are the descendant keys); inherit and
    study use the same way, shots, queries and seed."""

    eval_episodes: int = 200
    eval_way: int = 5
    eval_shots: str = "1,5"
    eval_query: int = 15
    eval_seed: int = 1234

    def __post_init__(self):
        for field in ("eval_episodes", "eval_way", "eval_query"):
            _need(self, int(getattr(self, field)) >= 1, field, "must be >= 1")
        _need(self, min(self.shots) >= 1, "eval_shots", "must list shot counts >= 1")

    @property
    def shots(self) -> tuple[int, ...]:
        return int_list(self.eval_shots, "eval_shots")


@dataclasses.dataclass(frozen=True)
class SuiteConfig(PretrainConfig):
    """The evidence suite: ``python -m gtl_jax.inherit``'s methods and heads on
    ``inherit_episodes`` episodes of ``eval_split``, the pre-trained baselines
    (``PretrainConfig``'s fields, and Heur-LG's last ``heur_layers`` conv layers), and
    ``python -m gtl_jax.study``'s seeds, ways, episodes, methods and second dataset."""

    methods: str = ",".join(METHODS)
    heads: str = "random,prototype"
    inherit_episodes: int = 600
    eval_split: str = "test"
    heur_layers: int = 3
    seeds: str = "0,1,2"
    study_ways: str = "5,20"
    study_episodes: int = 100
    study_methods: str = ",".join(STUDY_METHODS)
    transfer_dataset: str = "digits"

    def __post_init__(self):
        name_list(self.methods, "methods", METHODS)
        name_list(self.heads, "heads", HEADS)
        name_list(self.study_methods, "study_methods", STUDY_METHODS)
        for field in ("inherit_episodes", "heur_layers", "pretrain_batch"):
            _need(self, int(getattr(self, field)) >= 1, field, "must be >= 1")
        _need(self, int(self.study_episodes) >= 1, "study_episodes", "must be >= 1")
        _need(self, int(self.pretrain_steps) >= 0, "pretrain_steps", "must be >= 0")
        _need(
            self,
            self.eval_split in ("test", "val"),
            "eval_split",
            "must be test or val (the meta-train classes are the learngene's and the "
            "pretrained network's)",
        )
        seeds = int_list(self.seeds, "seeds")
        _need(self, len(set(seeds)) == len(seeds), "seeds", "a seed appears twice")
        _need(
            self,
            min(int_list(self.study_ways, "study_ways")) >= 2,
            "study_ways",
            "ways must be >= 2",
        )
        _need(
            self,
            self.transfer_dataset in TRANSFER_DATASETS,
            "transfer_dataset",
            "known: " + ", ".join(repr(k) for k in TRANSFER_DATASETS),
        )

    @property
    def pretrain(self) -> PretrainConfig:
        """The ``PretrainConfig`` of the baselines' network."""
        return PretrainConfig(
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(PretrainConfig)
            }
        )


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How the work is laid out (none of it changes the evolution's trajectory beyond float
    rounding): the population ``strategy``, ``workers`` processes pinned one per core (0: one
    per CPU core on CPU), ``distributed`` (join the processes of several hosts) and
    ``processes`` (joined processes on this machine)."""

    strategy: str = "auto"
    workers: int = 0
    distributed: bool = False
    processes: int = 1

    def __post_init__(self):
        _need(
            self,
            self.strategy in STRATEGIES,
            "strategy",
            f"must be one of {STRATEGIES}",
        )
        _need(self, int(self.workers) >= 0, "workers", "must be >= 0")
        _need(self, int(self.processes) >= 1, "processes", "must be >= 1")


# The sections of a config and their dataclasses (``seed`` is a top-level int).
SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "evolution": EvolutionConfig,
    "descendants": Recipe,
    "evaluation": EvaluationConfig,
    "suite": SuiteConfig,
    "execution": ExecutionConfig,
}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A config as the library's dataclasses (``experiment_of``)."""

    seed: int
    data: DataConfig
    model: ModelConfig
    evolution: EvolutionConfig
    descendants: Recipe
    evaluation: EvaluationConfig
    suite: SuiteConfig
    execution: ExecutionConfig


def experiment_of(c: ml_collections.ConfigDict) -> Experiment:
    """Every section of ``c`` as its dataclass; ConfigError names the first impossible
    field as ``section.field`` (``config field evolution.pop_size=10: must be ...``)."""
    sections = {}
    for name, cls in SECTIONS.items():
        values = c.get(name)
        if values is None:
            raise ConfigError(f"config has no section {name!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown config field {name}.{unknown[0]}; the fields of {name}: "
                f"{', '.join(known)}"
            )
        try:
            sections[name] = cls(**values)
        except ValueError as e:
            raise ConfigError(f"config field {name}.{e}") from None
    if not isinstance(c.get("seed"), int):
        raise ConfigError(f"config field seed={c.get('seed')!r}: must be an int")
    return Experiment(seed=c.seed, **sections)


def validate_config(
    c: ml_collections.ConfigDict,
    pools: dict | None = None,
) -> Experiment:
    """``experiment_of(c)``, then the checks that need the data or two sections; raises
    ConfigError naming the first impossible field.

    ``pools``: the loaded splits (only those are checked: callers require the splits they
    use). Any device count runs: ``gtl_jax.sharding`` pads a population the devices do not
    divide.
    """
    x = experiment_of(c)
    ev, ex = x.evolution, x.evaluation

    def need(ok: bool, field: str, value: Any, why: str):
        if not ok:
            raise ConfigError(f"config field {field}={value!r}: {why}")

    if pools is None:
        return x
    for split, field, way in (
        ("train", "evolution.life_way", ev.life_way),
        ("val", "evolution.critic_way", ev.critic_way),
        ("test", "evaluation.eval_way", ex.eval_way),
    ):
        if split in pools:
            n = pools[split].num_classes
            need(
                way <= n,
                field,
                way,
                f"more ways than the {n} classes of the {split} split",
            )
    per_class = pools["test"].images_per_class if "test" in pools else np.inf
    need(
        max(ex.shots) + ex.eval_query <= per_class,
        "evaluation.eval_query",
        ex.eval_query,
        f"max(eval_shots) + eval_query must be <= {per_class} images per class",
    )
    per_class = pools["val"].images_per_class if "val" in pools else np.inf
    need(
        ev.critic_shot + ev.critic_query <= per_class,
        "evolution.critic_query",
        ev.critic_query,
        f"critic_shot + critic_query must be <= {per_class} images per class",
    )
    return x


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (or its JSON) as ``{"section.field": value}``."""
    if not hasattr(tree, "items"):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else key)
    return out


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


# --------------------------------------------------------------------------- config files

DEFAULT_CONFIG = "omniglot"

# One line per field: what `--help` prints for the flag of the same name.
FIELD_HELP = {
    "seed": "seed of the evolution",
    "data.dataset": "dataset name: omniglot, cifar_fs, mini_imagenet, imagenet or npz",
    "data.data_dir": "dataset folder; default: $GTL_DATA_DIR or ../shared/data/<dataset>",
    "data.image_size": "images are resized to image_size x image_size",
    "data.classes": "imagenet: train,val,test class counts of the class split "
    "(evolution, critics, downstream tasks)",
    "data.classes_per_generation": "imagenet: evolution classes in a generation's "
    "lifetime pool, drawn anew every generation",
    "data.images_per_class": "imagenet: images per class in a generation's lifetime pool",
    "data.eval_images_per_class": "imagenet: images per class of the critics' and the "
    "downstream pools (fixed for the run)",
    "model.name": "architecture: vgg11, vgg13, vgg16, resnet12, or a ViT: vit_fs (for "
    "28-84 pixel images), vit_tiny, vit_small",
    "model.width": "width multiplier of every conv layer",
    "model.precision": "computation dtype: float32, or bfloat16 (mixed precision for "
    "GPU/TPU: bfloat16 convs, float32 parameters, BatchNorm statistics and loss; no faster "
    "on CPU)",
    "model.ratio": "learngene ratio r: each conv layer's gene owns round(r * C) output "
    "channels",
    "model.patch": "ViTs: the side of a patch in pixels (0: the model's own)",
    "model.closed_norm": "ViTs: LayerNorms normalise the learngene's dims apart, so its "
    "circuit is exactly closed (false: over all dims; the circuit then leaks)",
    "model.forms": "how the layers compute: auto (cpu on the CPU backend, xla on GPU/TPU), "
    "cpu (shifted-matmul convs on small maps, matmul kernel gradients, reshaped max-pool) "
    "or xla (lax.conv and max_pool); the same numbers to float rounding",
    "evolution.pop_size": "population size P (divisible by tournament_size)",
    "evolution.tournament_size": "tournament group size k",
    "evolution.generations": "number of generations G",
    "evolution.life_way": "classes per lifetime task (N_life)",
    "evolution.life_steps": "optimizer steps of lifetime learning (S_life)",
    "evolution.life_batch": "lifetime batch size",
    "evolution.life_optimizer": "lifetime optimizer: sgd (with momentum) or adam",
    "evolution.life_lr": "lifetime learning rate",
    "evolution.life_momentum": "lifetime SGD momentum (sgd only)",
    "evolution.life_weight_decay": "lifetime weight decay",
    "evolution.num_critics": "critic networks per individual (C)",
    "evolution.critic_way": "ways of critic episodes (meta-validation classes)",
    "evolution.critic_shot": "shots of critic episodes",
    "evolution.critic_query": "queries per class of critic episodes",
    "evolution.critic_steps": "fine-tuning steps of each critic (S_critic)",
    "evolution.mutation_sigma": "mutation noise, relative to each tensor's std",
    "evolution.mutation_rate": "probability that a tensor is mutated",
    "evolution.zero_cross": "zero the weights from non-gene inputs into gene outputs at "
    "insertion",
    "evolution.augment": "lifetime augmentation, on device: none or crop_flip (pad S//8, "
    "crop, flip)",
    "evolution.life_closed": "keep the weights from non-gene into gene channels at zero "
    "during lifetime learning (the circuit a host trains is the one it passes on)",
    "evolution.fixed_critics": "critics fine-tune on the same meta-validation episodes "
    "every generation (fitness comparable across generations)",
    "evolution.selection": "what tournaments rank: tournament (fitness), score (ECO's "
    "lineage score) or none (parents drawn at random: the no-selection control)",
    "evolution.score_decay": "lineage score: fitness plus this times the parent's score",
    "evolution.final_candidates": "the fittest members of the last generation re-scored "
    "before the final learngene is chosen",
    "evolution.rescore_episodes": "meta-validation episodes the final candidates are "
    "re-scored on (0: the fittest is chosen)",
    "descendants.head": "descendant head init: random, zero or prototype",
    "descendants.optimizer": "descendant (and critic) optimizer: adam or sgd",
    "descendants.learning_rate": "descendant (and critic) learning rate",
    "descendants.steps": "descendant fine-tuning steps S_d",
    "descendants.eval_every": "learning-curve resolution in steps",
    "descendants.batch_norm": "descendant BatchNorm while fine-tuning: batch (support "
    "statistics, running ones updated) or frozen (inherited running statistics)",
    "evaluation.eval_episodes": "test episodes per shot setting (meta-test classes)",
    "evaluation.eval_way": "ways of test episodes",
    "evaluation.eval_shots": "comma-separated shot settings of test episodes, e.g. 1,5",
    "evaluation.eval_query": "queries per class of test episodes",
    "evaluation.eval_seed": "seed of the test episodes and descendant keys (same for "
    "every method)",
    "suite.pretrain_steps": "inherit: Adam steps of the pretrained baseline network",
    "suite.pretrain_batch": "inherit: batch size of pre-training (all meta-train classes)",
    "suite.pretrain_lr": "inherit: Adam learning rate of pre-training",
    "suite.pretrain_weight_decay": "inherit: L2 weight decay of pre-training",
    "suite.methods": "inherit: comma-separated methods (learngene, scratch, "
    "pretrain-full, pretrain-circuit, heur-lg, proto-frozen)",
    "suite.heads": "inherit: comma-separated descendant heads to compare (random, zero, "
    "prototype)",
    "suite.inherit_episodes": "inherit: test episodes per shot setting (at least 600 for "
    "the tables)",
    "suite.eval_split": "inherit: split the episodes come from: test (report) or val "
    "(tuning)",
    "suite.heur_layers": "inherit: Heur-LG transfers the last this many conv layers",
    "suite.seeds": "study: comma-separated seeds, one evolution (and one control) each",
    "suite.study_ways": "study: comma-separated ways of the evaluation settings",
    "suite.study_episodes": "study: fixed episodes of a 5-way setting (N-way: 5/N as "
    "many, the same number of queries)",
    "suite.study_methods": "study: comma-separated methods (learngene, no-selection, "
    "score-selection, untrained-circuit, pretrain-circuit-eq, pretrain-closed-eq, "
    "scratch, pretrain-full)",
    "suite.transfer_dataset": "study: another dataset the learngenes are evaluated on, "
    "5-way (digits, or empty for none)",
    "execution.strategy": "population execution: auto (vmap on GPU/TPU, loop on CPU), "
    "vmap or loop",
    "execution.workers": "worker processes, one pinned per core: the evolution's members "
    "split between them (one process, one device, loop strategy) and descendant jobs "
    "(final table, inherit) (0: one per CPU core on CPU, 1 on GPU/TPU)",
    "execution.distributed": "call jax.distributed.initialize() to join the processes of "
    "several hosts",
    "execution.processes": "CPU: run as this many joined processes on this machine, one "
    "per core, each pinned; the population is sharded over them (pop_size must be "
    "divisible by it)",
}


def config_dir() -> pathlib.Path:
    """The folder of the config files: the installed package ``gtl_jax.configs`` (the
    repository's top-level ``configs/``, mapped there by pyproject.toml and setup.py), or
    ``configs/`` next to this package's folder in a source tree that is not installed."""
    spec = importlib.util.find_spec("gtl_jax.configs")
    if spec is not None and spec.submodule_search_locations:
        return pathlib.Path(next(iter(spec.submodule_search_locations)))
    return pathlib.Path(__file__).resolve().parents[1] / "configs"


def known_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("[a-z]*.py"))


def resolve_config(spec: str) -> str:
    """``NAME[:ARG]`` (a config of ``config_dir``) or ``PATH.py[:ARG]`` as
    ``/absolute/PATH.py[:ARG]``.

    A path that does not exist here but names a file of the installed configs
    (``configs/omniglot.py`` run from another folder) is that file.
    """
    name, sep, arg = spec.partition(":")
    if name.endswith(".py"):
        path = pathlib.Path(name)
        if not path.is_file():
            installed = config_dir() / path.name
            if path.parent.name != "configs" or not installed.is_file():
                raise ConfigError(f"config file {path} does not exist")
            path = installed
    else:
        known = known_configs()
        if name not in known:  # also refuses the private helpers (_paper) and "a.b"
            raise ConfigError(
                f"unknown config {name!r}; known configs: {', '.join(known)} (or a "
                "path to a .py)"
            )
        path = config_dir() / f"{name}.py"
    return f"{path.resolve()}{sep}{arg}"


def load_config(spec: str = DEFAULT_CONFIG) -> ml_collections.ConfigDict:
    """The config ``NAME[:ARG]`` or ``PATH.py[:ARG]`` (``get_config(ARG)`` of the file),
    e.g. ``load_config("omniglot:smoke")`` or ``load_config("configs/cifar_fs.py")``."""
    path, _, arg = resolve_config(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(
        f"gtl_jax_config_{pathlib.Path(path).stem}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config {spec!r} defines no get_config(arg) function")
    try:
        return module.get_config(arg or None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_label(spec: str) -> str:
    """A short name of a config spec (``configs/omniglot.py:smoke`` -> ``omniglot_smoke``),
    for default workdirs."""
    name, _, arg = spec.partition(":")
    stem = pathlib.Path(name).stem if name.endswith(".py") else name
    return f"{stem}_{arg}" if arg else stem


def smoke_note(spec: str) -> str:
    """A line saying a smoke variant's numbers check the pipeline ('' for other configs)."""
    if spec.partition(":")[2] != "smoke":
        return ""
    return (
        "\n(smoke config: toy sizes that check the whole pipeline runs; these numbers "
        "measure nothing)\n"
    )


# --------------------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command's own flag (beside ``--config``): absl type ``kind`` (string or bool)."""

    name: str
    default: Any
    help: str
    kind: str = "string"


QUIET = Flag("quiet", False, "no progress bars", "bool")


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """A parsed command line: the config (overrides applied), the ``--config`` value as
    given, the fields the command line set, and the command's own flags."""

    config: ml_collections.ConfigDict
    spec: str
    overridden: frozenset[str]
    flags: dict[str, Any]


def _config_arg(argv: list[str]) -> tuple[int, str] | None:
    """The index and value of ``--config=VALUE`` / ``--config VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        if re.fullmatch(r"--?config", arg):
            if i + 1 >= len(argv):
                raise ConfigError("flag --config needs a value")
            return i, argv[i + 1]
        m = re.fullmatch(r"--?config=(.*)", arg)
        if m:
            return i, m.group(1)
    return None


def _override_paths(argv: list[str]) -> list[str]:
    """The config fields ``--config.a.b=v`` (or ``--noconfig.a.b``) in ``argv`` set."""
    paths = []
    for arg in argv:
        m = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if m:
            paths.append(m.group(1))
    return paths


def _field_order(item: tuple[str, Any]) -> tuple:
    """Sections in ``SECTIONS`` order (``seed`` first), fields in their dataclass's order."""
    section, _, field = item[0].partition(".")
    if section not in SECTIONS:
        return (-1 if section == "seed" else len(SECTIONS), 0, item[0])
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    index = names.index(field) if field in names else len(names)
    return (list(SECTIONS).index(section), index, item[0])


def help_text(
    prog: str,
    description: str,
    spec: str,
    c: ml_collections.ConfigDict,
    own: list[Flag],
) -> str:
    """``--help``: the command's flags, then every config field once (``section.field``)
    with its value in the chosen config and one line of help."""
    lines = [
        f"usage: {prog} [--config=CONFIG[:VARIANT]] [--config.SECTION.FIELD=VALUE ...] "
        + " ".join(
            f"[--{f.name}]" if f.kind == "bool" else f"[--{f.name}={f.name.upper()}]"
            for f in own
        ),
        "",
        description,
        "",
        "flags:",
        "  --config=CONFIG[:VARIANT]",
        "      config file PATH.py[:VARIANT] (e.g. configs/omniglot.py:smoke) or the name "
        f"of an installed one ({', '.join(known_configs())}); default: "
        f"configs/{DEFAULT_CONFIG}.py",
    ]
    for f in own:
        lines += [f"  --{f.name} (default: {f.default!r})", f"      {f.help}"]
    lines += ["", f"config fields (--config.SECTION.FIELD=VALUE; defaults of {spec}):"]
    for path, value in sorted(flatten(c.to_dict()).items(), key=_field_order):
        lines += [
            f"  --config.{path} (default: {value!r})",
            f"      {FIELD_HELP.get(path, path)}",
        ]
    return "\n".join(lines)


def parse_command_line(
    argv: Sequence[str], *, prog: str, description: str, own: Sequence[Flag] = ()
) -> CommandLine:
    """Parses ``argv`` with absl flags and ``ml_collections.config_flags``.

    ``--config=configs/omniglot.py:smoke`` (a config file and its variant; also the short
    ``--config=omniglot:smoke``; default ``configs/omniglot.py``), then overrides
    ``--config.evolution.generations=3``, and the command's ``own`` flags
    (``--workdir=...``, ``--quiet``). Empty ``data.data_dir`` becomes ``$GTL_DATA_DIR``.

    Raises:
      ConfigError: one line naming what is wrong (unknown config, variant, field, flag or
        an unparsable value).
      SystemExit(0): after printing ``--help``.
    """
    from absl import flags  # noqa: PLC0415 (only the command line needs absl)
    from ml_collections import config_flags  # noqa: PLC0415

    argv = list(argv)
    found = _config_arg(argv)
    spec = DEFAULT_CONFIG if found is None else found[1]
    c = load_config(spec)  # one-line errors for an unknown config or variant
    if "--help" in argv or "-h" in argv or "--helpfull" in argv:
        print(help_text(prog, description, spec, c, [*own]))
        raise SystemExit(0)
    known = flatten(c.to_dict())
    for path in _override_paths(argv):
        if any(k.startswith(f"{path}.") for k in known):
            raise ConfigError(
                f"config field {path} is a section: set its fields, "
                f"--config.{path}.FIELD=VALUE"
            )
        if path not in known:
            close = difflib.get_close_matches(path, list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown config field {path}{hint}")
    # --config first (config_flags requires it before its overrides), as a resolved path.
    if found is not None:
        del argv[found[0] : found[0] + (1 if "=" in argv[found[0]] else 2)]
    argv = [prog, f"--config={resolve_config(spec)}", *argv]

    values = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=values, sys_argv=argv
    )
    for f in own:
        define = flags.DEFINE_bool if f.kind == "bool" else flags.DEFINE_string
        define(f.name, f.default, f.help, flag_values=values)
    try:
        rest = values(argv)
    except flags.Error as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument {rest[1]!r}")
    c = config.value
    if not c.data.data_dir:
        c.data.data_dir = os.environ.get("GTL_DATA_DIR", "")
    return CommandLine(
        config=c,
        spec=spec,
        overridden=frozenset(config_flags.get_override_values(values["config"])),
        flags={f.name: values[f.name].value for f in own},
    )


# --------------------------------------------------------------------------- files


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

    - Non-partitionable threefry: with the partitionable form (JAX's default) XLA CPU took
      7.5 s to compile a VGG11 x1/8 init, against 2.6 s without (docs/cpu/default_size.md).
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
