"""The host executor: a generation's evaluation driven from Python, one compiled member step
at a time; its selection is the core's ``Evolution.tell``.

The core's pure generation (``Evolution.step``) vmaps every member into one program: the
form for GPU/TPU. On XLA CPU a vmapped conv becomes a grouped conv, slower than the same
convs one member at a time, and a program's per-step dispatch is cheap, so on CPU the
members are evaluated faster by a host loop: ``HostExecutor.evaluate`` calls the same
per-member pure functions of the ``Evolution`` (``host_fn``, ``life_step_fn``,
``extract_fn``, critics by ``fine_tune``) on the members and tasks of the core's ``ask``,
through ``population_map`` (one compiled member function, looped over the members; or
vmapped), and can split a population between worker processes
(``gtl_jax.executors.workers.LifeWorkers``). What follows the evaluation (score, selection,
mutation, next state, metrics, final choice) is the core's own ``tell`` and
``choose_final``: every strategy calls the same jitted function. Where the population lives
(devices, padding) is ``gtl_jax.sharding.Placement``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gtl_jax.distributed import to_host
from gtl_jax.evolution import (
    Evaluation,
    Evolution,
    EvolutionState,
    Pools,
    host_metrics,
)
from gtl_jax.executors.descendants import DescendantEvaluator
from gtl_jax.executors.population_map import population_map, resolve_strategy
from gtl_jax.learngene import Learngene
from gtl_jax.operators import all_finite, pairs
from gtl_jax.sharding import Placement

# Host code runs no eager op on arrays that live on several devices: with several XLA CPU
# devices an eager op on a replicated population (one small program per op) was seen to
# deadlock in a collective; data movement goes through these jitted functions instead.
_pairs = jax.jit(pairs, static_argnums=(3, 4))
_stack = jax.jit(lambda xs: jnp.stack(xs, axis=1))  # S x f32[n] -> f32[n, S]
_block = jax.jit(
    lambda tree, lo, hi: jax.tree.map(lambda x: x[lo:hi], tree), static_argnums=(1, 2)
)
_column = jax.jit(lambda keys, step: keys[:, step])
_diverged = jax.jit(
    lambda losses, trained: (
        ~jnp.all(jnp.isfinite(losses), axis=1) | ~all_finite(trained)
    )
)


class HostExecutor:
    """Runs the generations of an ``Evolution`` from the host, by an execution strategy.

    Args:
      evo: the evolution (its per-member functions, ``ask``, ``tell``, config, pools).
      strategy: ``"loop"`` (one compiled member function per phase, looped over members:
        the CPU form), ``"vmap"`` (the core's pure generation, padded and sharded over the
        devices, one program) or ``"auto"`` (loop on CPU, vmap on GPU/TPU); see
        ``gtl_jax.executors.population_map``.
      mesh: the devices' ``"pop"`` mesh; ``"auto"``: all devices (``gtl_jax.sharding``).

    The state it takes and returns is placed (``init``, ``place``): padded to a multiple
    of the devices and split over them; ``logical`` gives its P real members, which
    checkpoints and learngene files hold.
    """

    def __init__(self, evo: Evolution, strategy: str = "auto", mesh: Any = "auto"):
        self.evo = evo
        self.strategy = resolve_strategy(strategy)
        self.placement = placement = Placement(evo.config.pop_size, mesh)
        self.pools = placement.replicate(evo.pools)
        c = evo.config
        self.pure_step = placement.jit_generation(evo)
        self.tell = placement.jit_tell(evo)
        self.ask = jax.jit(evo.ask)
        self.hosts = population_map(evo.host_fn, (0, 0, 0), strategy=strategy)
        self.life_step = population_map(
            evo.life_step_fn, (0, 0, 0, None), strategy=strategy, carry=1
        )
        self.extract = population_map(evo.extract_fn, (0,), strategy=strategy)
        self.critics = DescendantEvaluator(
            evo.critic_model,
            evo.critic_recipe,
            n_way=c.critic_way,
            strategy=strategy,
            zero_cross=c.zero_cross,
            shared_learngene=False,
        )

    # ----------------------------------------------------------------- placement

    def init(self, key: jax.Array) -> EvolutionState:
        """The core's generation 0, placed."""
        return self.placement.place(self.evo.init(key))

    def place(self, state: EvolutionState) -> EvolutionState:
        """A state of P members (a restored checkpoint) padded and split over the devices."""
        return self.placement.place(state)

    def logical(self, state: EvolutionState) -> EvolutionState:
        """A placed state's P real members (what checkpoints and learngene files hold)."""
        return self.placement.logical(state)

    def put_pools(self, train: Any = None, val: Any = None) -> Pools:
        """A generation's own pools (a dataset streamed generation by generation), checked
        by ``Evolution.put_pools`` and replicated on every device as the evolution's are
        (each process fills its own devices from its copy: every process passes the same
        images)."""
        self.evo.put_pools(train, val)  # the shape and dtype checks
        return Pools(
            self.pools.train if train is None else self.placement.replicate(train),
            self.pools.val if val is None else self.placement.replicate(val),
        )

    # ----------------------------------------------------------------- evaluate

    def evaluate(
        self,
        root_key: jax.Array,
        generation: int,
        learngenes: Learngene,
        lo: int = 0,
        hi: int | None = None,
        on_step: Callable[[float], Any] | None = None,
        pools: Pools | None = None,
        life_genes: dict[str, Any] | None = None,
    ) -> Evaluation:
        """Steps 1-4 of generation ``generation`` for the members ``[lo, hi)``.

        The members' keys, tasks and critic episodes are the core's ``ask`` for the whole
        population, so a block computes what the whole population would for its members:
        ``generation`` can split the population between worker processes.

        Args:
          root_key: the run's root key.
          learngenes: the learngenes of members ``[lo, hi)`` (stacked).
          lo, hi: the block of members (default: all of them).
          on_step: called with the number of lifetime or critic steps (of the block) just
            completed.
          pools: the images to sample from (``put_pools``); None: the evolution's own.
          life_genes: the life genes of members ``[lo, hi)`` (``{name: f32[n]}``), if the
            evolution has them.

        Returns:
          The block's ``Evaluation``; its per-member scalars are host arrays (gathered when
          processes share the work).
        """
        pools = self.pools if pools is None else pools
        c = self.evo.config
        hi = c.pop_size if hi is None else hi
        n = hi - lo
        tasks = self.ask(root_key, jnp.int32(generation), pools)
        if (lo, hi) != (0, c.pop_size):
            tasks = tasks.replace(
                **{
                    name: _block(getattr(tasks, name), lo, hi)
                    for name in ("host_keys", "classes", "life_keys")
                }
            )
        # 1. Hosts: every learngene into a fresh network (its own key).
        hosts = self.hosts(tasks.host_keys, learngenes, life_genes)
        # 2. Lifetime learning: each member its own life_way-way task of meta-train classes.
        life_losses = []
        for step in range(c.life_steps):
            keys = _column(tasks.life_keys, jnp.int32(step))
            hosts, loss = self.life_step(keys, hosts, tasks.classes, pools.train)
            life_losses.append(loss)
            if on_step is not None:
                on_step(1.0)
        life_losses = _stack(life_losses) if life_losses else jnp.zeros((n, 1))
        # 3. Extraction: what was learned in life is inherited.
        trained = self.extract(hosts)
        diverged = _diverged(life_losses, trained)
        # 4. Fitness by critics: the same critic tasks and keys for every member.
        result = self.critics(
            *_pairs(tasks.critic_keys, tasks.episodes, trained, n, c.num_critics),
            on_step=on_step,
        )
        final, instinct, diverged, life_losses = to_host(
            (result.final, result.instinct, diverged, life_losses)
        )
        return Evaluation(
            trained=trained,
            life_losses=life_losses,
            diverged=diverged,
            fitness=final.reshape(n, c.num_critics).mean(axis=1),
            instinct=instinct.reshape(n, c.num_critics),
        )

    # ----------------------------------------------------------------- a generation

    def generation(
        self,
        root_key: jax.Array,
        state: EvolutionState,
        on_step: Callable[[float], Any] | None = None,
        *,
        workers: Callable[..., Evaluation] | None = None,
        pools: Pools | None = None,
    ) -> tuple[EvolutionState, dict[str, Any]]:
        """Runs one generation: ``(key, state) -> (state, metrics)``, the state placed.

        Args:
          root_key: the run's root key; the generation's key is ``fold_in(root_key, g)``.
          state: the state after ``g`` generations.
          on_step: called with the number of lifetime or critic steps (of the whole
            population) just completed, e.g. ``tqdm.update``.
          workers: computes ``evaluate`` of the whole population elsewhere, as
            ``workers(root_key, generation, learngenes, on_step, life_genes)``
            (``gtl_jax.executors.LifeWorkers``: blocks of members in worker processes);
            None: in this process.
          pools: this generation's images (``put_pools``: a dataset streamed generation by
            generation); None: the evolution's own. Not with ``workers``, which sample from
            their own.

        Returns:
          The next state and the metrics as logged values (``host_metrics``).
        """
        if pools is not None and workers is not None:
            raise ValueError("pools are given to this process only, not to its workers")
        pools = self.pools if pools is None else pools
        if self.strategy == "vmap" and workers is None:
            state, metrics = self.pure_step(root_key, state, pools)
            if on_step is not None:
                c = self.evo.config
                on_step(float(c.life_steps + c.critic_steps))
            return state, host_metrics(metrics)
        g = int(state.generation)
        members = self.logical(state)
        if workers is None:
            evaluation = self.evaluate(
                root_key,
                g,
                members.learngenes,
                on_step=on_step,
                pools=pools,
                life_genes=members.life_genes,
            )
        else:
            evaluation = workers(
                root_key, g, members.learngenes, on_step, members.life_genes
            )
        evaluation = evaluation.replace(
            **{
                name: self.placement.replicate(getattr(evaluation, name))
                for name in ("life_losses", "diverged", "fitness", "instinct")
            }
        )
        state, metrics = self.tell(root_key, state, evaluation)
        return state, host_metrics(metrics)

    def choose_final(
        self,
        key: jax.Array,
        state: EvolutionState,
        *,
        candidates: int,
        episodes: int,
    ) -> tuple[int, dict[str, Any]]:
        """The core's ``Evolution.choose_final`` on a placed state, its re-scoring critics
        computed by this executor's strategy."""
        return self.evo.choose_final(
            key,
            self.logical(state),
            self.pools,
            candidates=candidates,
            episodes=episodes,
            critics_fn=self.critics,
        )
