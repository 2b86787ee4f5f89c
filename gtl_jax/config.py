"""A config as typed objects: its sections' dataclasses, ``Experiment``, and the config files.

The commands read one nested ``ml_collections`` config (``configs/omniglot.py`` at the top of
the repository, installed as the package ``gtl_jax.configs``; ``load_config``) whose sections
map onto dataclasses (``SECTIONS``): ``data``: ``DataConfig``; ``model``: ``ModelConfig``;
``evolution``: ``gtl_jax.evolution.EvolutionConfig``; ``descendants``:
``gtl_jax.descendants.Recipe``; ``evaluation``: ``EvaluationConfig``; ``suite``:
``SuiteConfig`` (its ``pretrain_*`` fields are ``gtl_jax.pretrain.PretrainConfig``'s);
``execution``: ``ExecutionConfig``; and ``seed``, the evolution's seed.

Each section is built from ``dataclasses.asdict`` of its dataclass, so every default is
written once, in the dataclass; each dataclass checks its own fields (``ValueError
"field=value: why"``) and ``experiment_of`` turns that into one ``ConfigError`` line naming
``section.field``. ``validate_config`` adds only the checks that need the data or two
sections.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
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
    use). Any device count runs: the executors pad a population the devices do not divide.
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


# --------------------------------------------------------------------------- config files

DEFAULT_CONFIG = "omniglot"


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
