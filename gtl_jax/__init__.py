"""gtl_jax: Genetic Transfer Learning in JAX.

Evolve *learngenes* (the channel circuit of a network, about 20% of its parameters) through
generations of a population of networks; networks that inherit one start good and learn new
tasks fast. The public API is a few pure functions; ``python -m gtl_jax.evolve`` runs it all.

``configure_jax`` (the command line's JAX settings) and ``descendant_recipe`` (a config's
``Recipe``) live in the experiment layer, ``gtl_jax.experiment``, and are loaded on first
use, so ``import gtl_jax`` does not import the command line's config and flag machinery.
"""

import importlib

# First: under `python -m gtl_jax.<command>` a Ctrl-C while the rest imports is one line too.
from gtl_jax import (
    attention,
    stopping,  # noqa: F401
)
from gtl_jax.checkpoint import load_learngene, save_learngene
from gtl_jax.data import ClassPool, Episode, load_dataset, sample_batch, sample_episode
from gtl_jax.descendants import Recipe, fine_tune, fine_tuned, mean_confidence
from gtl_jax.evolution import (
    Evaluation,
    Evolution,
    EvolutionConfig,
    EvolutionState,
    Pools,
    host_metrics,
)
from gtl_jax.executors import DescendantEvaluator, HostExecutor, population_map
from gtl_jax.learngene import (
    LearngeneSpec,
    ViTSpec,
    extract_learngene,
    insert_learngene,
    make_spec,
    parameter_share,
)
from gtl_jax.models import MODELS, build_model
from gtl_jax.operators import mutate, reproduce, tournament_select
from gtl_jax.population import TrainState, init_network, train_step
from gtl_jax.pretrain import PretrainConfig, pretrain
from gtl_jax.sharding import Placement

__version__ = "0.1.0"

__all__ = [
    "attention",
    "MODELS",
    "ClassPool",
    "DescendantEvaluator",
    "Episode",
    "Evaluation",
    "Evolution",
    "EvolutionConfig",
    "EvolutionState",
    "HostExecutor",
    "LearngeneSpec",
    "Placement",
    "Pools",
    "PretrainConfig",
    "Recipe",
    "TrainState",
    "ViTSpec",
    "build_model",
    "configure_jax",
    "descendant_recipe",
    "extract_learngene",
    "fine_tune",
    "fine_tuned",
    "host_metrics",
    "init_network",
    "insert_learngene",
    "load_dataset",
    "load_learngene",
    "make_spec",
    "mean_confidence",
    "mutate",
    "parameter_share",
    "population_map",
    "pretrain",
    "reproduce",
    "sample_batch",
    "sample_episode",
    "save_learngene",
    "tournament_select",
    "train_step",
]

# Public names defined in gtl_jax.experiment, imported when first used.
_FROM_EXPERIMENT = ("configure_jax", "descendant_recipe")


def __getattr__(name: str):
    if name in _FROM_EXPERIMENT:
        return getattr(importlib.import_module("gtl_jax.experiment"), name)
    raise AttributeError(f"module 'gtl_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
