"""A config as typed objects: its sections' dataclasses, ``Experiment``, and the config files.

The commands read one nested ``ml_collections`` config (``configs/omniglot.py`` at the top of
the repository, installed as the package ``gtl_jax.configs``; ``gtl_jax.cli.load_config``) whose sections
map onto dataclasses (``SECTIONS``): ``data``: ``DataConfig``; ``model``: ``ModelConfig``;
``evolution``: ``gtl_jax.evolution.EvolutionConfig``; ``descendants``:
``gtl_jax.descendants.Recipe``; ``evaluation``: ``EvaluationConfig``; ``suite``:
``SuiteConfig`` (its ``pretrain_*`` fields are ``gtl_jax.pretrain.PretrainConfig``'s);
``execution``: ``ExecutionConfig``; and ``seed``, the evolution's seed.

Each section is built from ``dataclasses.asdict`` of its dataclass, so every default is
written once, in the dataclass, beside its ``--help`` line (``metadata={"help": ...}``); each dataclass checks its own fields (``ValueError
"field=value: why"``) and ``experiment_of`` turns that into one ``ConfigError`` line naming
``section.field``. ``validate_config`` adds only the checks that need the data or two
sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from gtl_jax.data import (
    DATASETS,
    STREAMS,
    imagenet,
)
from gtl_jax.data.digits import load_digits
from gtl_jax.descendants import HEADS, Recipe
from gtl_jax.evolution import EvolutionConfig
from gtl_jax.executors import STRATEGIES
from gtl_jax.models import FORMS, MODELS, PRECISIONS, VITS
from gtl_jax.pretrain import PretrainConfig


class ConfigError(ValueError):
    """A config value is impossible; the message names the field (``section.field``)."""


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
    """The images (``dataset``: a key of ``gtl_jax.data.DATASETS``). Only the datasets
    streamed generation by generation (``gtl_jax.data.STREAMS``: imagenet) read the fields
    ``classes`` to ``eval_images_per_class``, whose defaults are ImageNet-1K's
    (``gtl_jax.data.imagenet``)."""

    dataset: str = dataclasses.field(
        default="omniglot",
        metadata={
            "help": "dataset name: omniglot, cifar_fs, mini_imagenet, imagenet or npz"
        },
    )
    data_dir: str = dataclasses.field(
        default="",
        metadata={
            "help": "dataset folder; default: $GTL_DATA_DIR or ../shared/data/<dataset>"
        },
    )
    image_size: int = dataclasses.field(
        default=28, metadata={"help": "images are resized to image_size x image_size"}
    )
    classes: str = dataclasses.field(
        default=imagenet.CLASSES,
        metadata={
            "help": "imagenet: train,val,test class counts of the class split (evolution, "
            "critics, downstream tasks)"
        },
    )
    classes_per_generation: int = dataclasses.field(
        default=imagenet.CLASSES_PER_GENERATION,
        metadata={
            "help": "imagenet: evolution classes in a generation's lifetime pool, drawn anew "
            "every generation"
        },
    )
    images_per_class: int = dataclasses.field(
        default=imagenet.IMAGES_PER_CLASS,
        metadata={"help": "imagenet: images per class in a generation's lifetime pool"},
    )
    eval_images_per_class: int = dataclasses.field(
        default=imagenet.EVAL_IMAGES_PER_CLASS,
        metadata={
            "help": "imagenet: images per class of the critics' and the downstream pools "
            "(fixed for the run)"
        },
    )

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
    """The network (``name``: a key of ``gtl_jax.models.MODELS``) and the learngene's
    ``ratio``; ``closed_norm``: ``gtl_jax.models.ViT.gene_dims``."""

    name: str = dataclasses.field(
        default="vgg11",
        metadata={
            "help": "architecture: vgg11, vgg13, vgg16, resnet12, or a ViT: vit_fs (for 28-84 "
            "pixel images), vit_tiny, vit_small"
        },
    )
    width: float = dataclasses.field(
        default=0.25, metadata={"help": "width multiplier of every conv layer"}
    )
    precision: str = dataclasses.field(
        default="float32",
        metadata={
            "help": "computation dtype: float32, or bfloat16 (mixed precision for GPU/TPU: "
            "bfloat16 convs, float32 parameters, BatchNorm statistics and loss; no "
            "faster on CPU)"
        },
    )
    ratio: float = dataclasses.field(
        default=0.45,
        metadata={
            "help": "learngene ratio r: each conv layer's gene owns round(r * C) output "
            "channels"
        },
    )
    forms: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "how the layers compute: auto (cpu on the CPU backend, xla on GPU/TPU), "
            "cpu (shifted-matmul convs on small maps, matmul kernel gradients, "
            "reshaped max-pool) or xla (lax.conv and max_pool); the same numbers to "
            "float rounding"
        },
    )
    patch: int = dataclasses.field(
        default=0,
        metadata={"help": "ViTs: the side of a patch in pixels (0: the model's own)"},
    )
    closed_norm: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "ViTs: LayerNorms normalise the learngene's dims apart, so its circuit is "
            "exactly closed (false: over all dims; the circuit then leaks)"
        },
    )

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
    """The fixed test episodes of ``python -m gtl_jax.evolve``'s final table; inherit and
    study use the same way, shots, queries and seed."""

    eval_episodes: int = dataclasses.field(
        default=200,
        metadata={"help": "test episodes per shot setting (meta-test classes)"},
    )
    eval_way: int = dataclasses.field(
        default=5, metadata={"help": "ways of test episodes"}
    )
    eval_shots: str = dataclasses.field(
        default="1,5",
        metadata={"help": "comma-separated shot settings of test episodes, e.g. 1,5"},
    )
    eval_query: int = dataclasses.field(
        default=15, metadata={"help": "queries per class of test episodes"}
    )
    eval_seed: int = dataclasses.field(
        default=1234,
        metadata={
            "help": "seed of the test episodes and descendant keys (same for every method)"
        },
    )

    def __post_init__(self):
        for field in ("eval_episodes", "eval_way", "eval_query"):
            _need(self, int(getattr(self, field)) >= 1, field, "must be >= 1")
        _need(self, min(self.shots) >= 1, "eval_shots", "must list shot counts >= 1")

    @property
    def shots(self) -> tuple[int, ...]:
        return int_list(self.eval_shots, "eval_shots")


@dataclasses.dataclass(frozen=True)
class SuiteConfig(PretrainConfig):
    """The evidence suite: ``python -m gtl_jax.inherit``'s fields, the pre-trained
    baselines' (``PretrainConfig``'s) and ``python -m gtl_jax.study``'s."""

    methods: str = dataclasses.field(
        default=",".join(METHODS),
        metadata={
            "help": "inherit: comma-separated methods (learngene, scratch, pretrain-full, "
            "pretrain-circuit, heur-lg, proto-frozen)"
        },
    )
    heads: str = dataclasses.field(
        default="random,prototype",
        metadata={
            "help": "inherit: comma-separated descendant heads to compare (random, zero, "
            "prototype)"
        },
    )
    inherit_episodes: int = dataclasses.field(
        default=600,
        metadata={
            "help": "inherit: test episodes per shot setting (at least 600 for the tables)"
        },
    )
    eval_split: str = dataclasses.field(
        default="test",
        metadata={
            "help": "inherit: split the episodes come from: test (report) or val (tuning)"
        },
    )
    heur_layers: int = dataclasses.field(
        default=3,
        metadata={"help": "inherit: Heur-LG transfers the last this many conv layers"},
    )
    seeds: str = dataclasses.field(
        default="0,1,2",
        metadata={
            "help": "study: comma-separated seeds, one evolution (and one control) each"
        },
    )
    study_ways: str = dataclasses.field(
        default="5,20",
        metadata={"help": "study: comma-separated ways of the evaluation settings"},
    )
    study_episodes: int = dataclasses.field(
        default=100,
        metadata={
            "help": "study: fixed episodes of a 5-way setting (N-way: 5/N as many, the same "
            "number of queries)"
        },
    )
    study_methods: str = dataclasses.field(
        default=",".join(STUDY_METHODS),
        metadata={
            "help": "study: comma-separated methods (learngene, no-selection, "
            "score-selection, untrained-circuit, pretrain-circuit-eq, "
            "pretrain-closed-eq, scratch, pretrain-full)"
        },
    )
    transfer_dataset: str = dataclasses.field(
        default="digits",
        metadata={
            "help": "study: another dataset the learngenes are evaluated on, 5-way (digits, "
            "or empty for none)"
        },
    )

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
    """How the work is laid out; none of it changes the evolution's trajectory beyond float
    rounding."""

    strategy: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "population execution: auto (vmap on GPU/TPU, loop on CPU), vmap or loop"
        },
    )
    workers: int = dataclasses.field(
        default=0,
        metadata={
            "help": "worker processes, one pinned per core: the evolution's members split "
            "between them (one process, one device, loop strategy) and descendant "
            "jobs (final table, inherit) (0: one per CPU core on CPU, 1 on GPU/TPU)"
        },
    )
    distributed: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "call jax.distributed.initialize() to join the processes of several hosts"
        },
    )
    processes: int = dataclasses.field(
        default=1,
        metadata={
            "help": "CPU: run as this many joined processes on this machine, one per core, "
            "each pinned; the population is sharded over them (pop_size must be "
            "divisible by it)"
        },
    )

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
    """A config as the library's dataclasses (``experiment_of``): what the commands'
    functions receive."""

    seed: int = dataclasses.field(metadata={"help": "seed of the evolution"})
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
    *,
    evolution: bool = True,
    eval_split: str = "test",
) -> Experiment:
    """``experiment_of(c)``, then the checks that need the data or two sections; raises
    ConfigError naming the first impossible field.

    ``pools``: the loaded splits (only those are checked: callers require the splits they
    use). ``evolution``: also the evolution's checks (lifetimes on the train split, critics
    on val); ``python -m gtl_jax.inherit`` evolves nothing and skips them. ``eval_split``:
    the split the test episodes come from. Any device count runs: ``gtl_jax.sharding``
    pads a population the devices do not divide.
    """
    x = experiment_of(c)
    ev, ex = x.evolution, x.evaluation

    def need(ok: bool, field: str, value: Any, why: str):
        if not ok:
            raise ConfigError(f"config field {field}={value!r}: {why}")

    def per_class(split: str) -> float:
        return pools[split].images_per_class if split in pools else np.inf

    if pools is None:
        return x
    ways = [(eval_split, "evaluation.eval_way", ex.eval_way)]
    if evolution:
        ways += [
            ("train", "evolution.life_way", ev.life_way),
            ("val", "evolution.critic_way", ev.critic_way),
        ]
    for split, field, way in ways:
        if split in pools:
            n = pools[split].num_classes
            need(
                way <= n,
                field,
                way,
                f"more ways than the {n} classes of the {split} split",
            )
    need(
        max(ex.shots) + ex.eval_query <= per_class(eval_split),
        "evaluation.eval_query",
        ex.eval_query,
        f"max(eval_shots) + eval_query must be <= {per_class(eval_split)} images per "
        "class",
    )
    if evolution:
        need(
            ev.critic_shot + ev.critic_query <= per_class("val"),
            "evolution.critic_query",
            ev.critic_query,
            f"critic_shot + critic_query must be <= {per_class('val')} images per class",
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
