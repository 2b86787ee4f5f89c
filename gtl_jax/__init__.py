"""gtl_jax: Genetic Transfer Learning in JAX.

Evolve *learngenes* (the channel circuit of a network, about 20% of its parameters) through
generations of a population of networks; networks that inherit one start good and learn new
tasks fast. The public API is a few pure functions; ``python -m gtl_jax.evolve`` runs it all.
"""

from gtl_jax.checkpoint import load_learngene, save_learngene
from gtl_jax.data import ClassPool, Episode, load_dataset, sample_batch, sample_episode
from gtl_jax.descendants import DescendantEvaluator, Recipe, mean_confidence
from gtl_jax.evolution import (
    Evolution,
    EvolutionConfig,
    EvolutionState,
    mutate,
    reproduce,
    tournament_select,
)
from gtl_jax.learngene import (
    LearngeneSpec,
    extract_learngene,
    insert_learngene,
    make_spec,
    parameter_share,
)
from gtl_jax.models import MODELS, build_model
from gtl_jax.population import TrainState, init_network, population_map, train_step

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "ClassPool",
    "DescendantEvaluator",
    "Episode",
    "Evolution",
    "EvolutionConfig",
    "EvolutionState",
    "LearngeneSpec",
    "Recipe",
    "TrainState",
    "build_model",
    "extract_learngene",
    "init_network",
    "insert_learngene",
    "load_dataset",
    "load_learngene",
    "make_spec",
    "mean_confidence",
    "mutate",
    "parameter_share",
    "population_map",
    "reproduce",
    "sample_batch",
    "sample_episode",
    "save_learngene",
    "tournament_select",
    "train_step",
]
