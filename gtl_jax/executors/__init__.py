"""Execution strategies: how the core's pure per-member functions run on a machine.

The core (``gtl_jax.evolution``, ``descendants``, ``population``, ``learngene``, ``models``,
``data``) is pure functions. ``Evolution.step`` vmaps every member of a generation into one
program, the form for GPU/TPU. What this package adds was measured faster on CPU, and is
passed in by the caller (the command line picks it from ``execution.strategy``):

- ``population_map``: a per-member function over a population, as a host loop of one
  compiled member function (``"loop"``) or vmapped; sharded over devices, padded when the
  population does not divide them (``gtl_jax.sharding``).
- ``DescendantEvaluator``: one descendant per episode, vmapped or one at a time.
- ``HostExecutor``: a generation's evaluation driven from the host with those, then the
  core's ``tell``; its population placed by ``gtl_jax.sharding``.
- ``LifeWorkers``: the members' lives split between worker processes pinned one per core.

The core never imports this package.
"""

from gtl_jax.executors.descendants import DescendantEvaluator
from gtl_jax.executors.host import HostExecutor
from gtl_jax.executors.population_map import (
    STRATEGIES,
    population_map,
    resolve_strategy,
)
from gtl_jax.executors.workers import LifeWorkers

__all__ = [
    "STRATEGIES",
    "DescendantEvaluator",
    "HostExecutor",
    "LifeWorkers",
    "population_map",
    "resolve_strategy",
]
