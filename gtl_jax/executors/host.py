"""The host executor: a generation driven from Python, one compiled member step at a time.

The core's pure generation (``Evolution.step``) vmaps every member into one program: the
form for GPU/TPU. On XLA CPU a vmapped conv becomes a grouped conv, slower than the same
convs one member at a time, and a program's per-step dispatch is cheap, so on CPU the
population runs faster as a host loop: ``HostExecutor`` calls the same per-member pure
functions of the ``Evolution`` (``host_fn``, ``life_step_fn``, ``extract_fn``, critics by
``fine_tune``) through ``population_map`` (one compiled member function, looped over the
members; or vmapped), and splits a population between worker processes
(``gtl_jax.executors.workers.LifeWorkers``). It computes the pure generation's numbers up to
float rounding (tests/executors/test_host.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gtl_jax.distributed import to_host
from gtl_jax.evolution import (
    Evolution,
    EvolutionState,
    Pools,
    all_finite,
    diversity,
    generation_keys,
    host_metrics,
    pairs,
    reproduce,
    sanitize_fitness,
)
from gtl_jax.executors.descendants import DescendantEvaluator
from gtl_jax.executors.population_map import population_map, resolve_strategy
from gtl_jax.learngene import Learngene
from gtl_jax.population import population_sharding, replicated_sharding


@struct.dataclass
class Lives:
    """Steps 1-4 of a generation for a block of n members (``HostExecutor.lives``).

    Attributes:
      trained: the learngenes extracted after lifetime learning (stacked, leading n).
      life_losses: f32[life_steps, n] (host), the lifetime losses.
      diverged: bool[n] (host), a non-finite loss or learngene.
      fitness: f32[n] (host), mean critic query accuracy (diverged ones included).
      instinct: f32[n * num_critics] (host), the critics' instincts.
    """

    trained: Learngene
    life_losses: np.ndarray
    diverged: np.ndarray
    fitness: np.ndarray
    instinct: np.ndarray


def _replicated_then_sharded(fn: Callable, mesh: Any) -> Callable:
    """``fn`` run on replicated inputs (each device computes it whole, with the program of one
    device, so its numbers are one device's; a partitioned ``mutate`` rounded differently),
    its outputs then split over the ``"pop"`` axis (left replicated when the population does
    not divide the devices). For the small, cheap reproduction step."""
    # Resharding by identity jits, not device_put: with several processes each process
    # holds only its own devices, and jit moves the data between them.
    to_replicated = jax.jit(lambda tree: tree, out_shardings=replicated_sharding(mesh))
    to_population = jax.jit(lambda tree: tree, out_shardings=population_sharding(mesh))

    def placed(*args):
        out = fn(*to_replicated(args))
        if jax.tree.leaves(out)[0].shape[0] % mesh.size:
            return out
        return to_population(out)

    return placed


# Host code runs no eager op on arrays that live on several devices: with several XLA CPU
# devices an eager op on a replicated population (one small program per op) was seen to
# deadlock in a collective; data movement goes through these jitted functions instead.


_pairs = jax.jit(pairs, static_argnums=(3, 4))
_stack = jax.jit(lambda xs: jnp.stack(xs))
_member = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree))


def _mean_per_member(values: jax.Array, per_member: int) -> np.ndarray:
    """f32[n * per_member] -> the mean of each member's (host)."""
    values = jnp.asarray(to_host(values))
    return to_host(values.reshape(-1, per_member).mean(axis=1))


class HostExecutor:
    """Runs the generations of an ``Evolution`` from the host, by an execution strategy.

    Args:
      evo: the evolution (its per-member functions, config, pools, mesh).
      strategy: ``"loop"`` (one compiled member function per phase, looped over members:
        the CPU form), ``"vmap"`` or ``"auto"`` (loop on CPU, vmap on GPU/TPU); see
        ``gtl_jax.executors.population_map``.

    Its ``generation(root_key, state)`` returns the state the pure ``Evolution.step`` would
    (up to float rounding) and the metrics as logged values.
    """

    def __init__(self, evo: Evolution, strategy: str = "auto"):
        self.evo = evo
        self.strategy = resolve_strategy(strategy)
        # The vmap strategy is the pure generation itself, jitted.
        self.pure_step = jax.jit(evo.step)
        c = evo.config
        self.hosts = population_map(evo.host_fn, (0, 0), strategy=strategy)
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
        # The core's samplers, jitted: the same keys give the same tasks and episodes.
        self.sample_tasks = jax.jit(evo.sample_tasks)
        self.sample_critic_episodes = jax.jit(evo.sample_critic_episodes)
        self.critic_episodes = jax.jit(evo.critic_episodes)
        self.reproduce = jax.jit(
            functools.partial(
                reproduce,
                tournament_size=c.tournament_size,
                sigma=c.mutation_sigma,
                rate=c.mutation_rate,
                selection=c.selection,
            )
        )
        if evo.mesh is not None:
            self.reproduce = _replicated_then_sharded(self.reproduce, evo.mesh)
        self.diversity = jax.jit(diversity)
        # One program (not op by op: with several devices an eager op on a replicated
        # population is a program of its own on every device).
        self.diverged = jax.jit(
            lambda losses, trained: (
                ~jnp.all(jnp.isfinite(losses), axis=0) | ~all_finite(trained)
            )
        )

    def choose_final(
        self,
        key: jax.Array,
        state: EvolutionState,
        *,
        candidates: int,
        episodes: int,
    ) -> tuple[int, dict[str, Any]]:
        """The member of the last generation whose trained learngene the run passes on.

        With selection, the ``candidates`` fittest are re-scored by critics on ``episodes``
        fixed meta-validation episodes (the same for each; drawn from ``key``) and the best
        re-scored one is chosen: a generation's fitness, a few critic episodes, ranks
        near-equal learngenes by chance. With ``selection="none"`` a member drawn at random
        (the control chooses as it reproduces).

        Returns ``(index, info)``: info holds the candidates and their re-scored fitness.
        """
        size = self.evo.config.pop_size
        choose_key, episode_key, init_key = jax.random.split(key, 3)
        if self.evo.config.selection == "none":
            index = int(jax.random.randint(choose_key, (), 0, size))
            return index, {"chosen": index, "rule": "random member"}
        fitness = np.asarray(sanitize_fitness(to_host(state.fitness)))
        order = [int(i) for i in np.argsort(-fitness, kind="stable")[:candidates]]
        if episodes < 1 or len(order) == 1:
            return order[0], {"chosen": order[0], "rule": "fittest"}
        n = len(order)
        genes = jax.tree.map(
            lambda x: jnp.asarray(to_host(x))[np.array(order)], state.trained
        )
        sampled = self.sample_critic_episodes(
            jax.random.split(episode_key, episodes), self.evo.val_images
        )
        keys = jax.random.split(init_key, episodes)
        result = self.critics(*_pairs(keys, sampled, genes, n, episodes))
        rescored = to_host(result.final).reshape(n, episodes).mean(axis=1)
        index = order[int(np.argmax(rescored))]
        return index, {
            "chosen": index,
            "rule": f"best of the {n} fittest re-scored on {episodes} episodes",
            "candidates": order,
            "rescored": [float(f) for f in rescored],
        }

    def lives(
        self,
        key: jax.Array,
        learngenes: Learngene,
        lo: int = 0,
        hi: int | None = None,
        on_step: Callable[[float], Any] | None = None,
        critic_key: jax.Array | None = None,
        pools: Pools | None = None,
    ) -> Lives:
        """Steps 1-4 of a generation for the members ``[lo, hi)`` of the population.

        The keys, tasks and critic episodes are those of the whole population (drawn from
        the generation's ``key``), so a block computes what the whole population would for
        its members: ``generation`` can split the population between worker processes.

        Args:
          key: the generation's key, ``fold_in(root_key, g)``.
          learngenes: the learngenes of members ``[lo, hi)`` (stacked).
          lo, hi: the block of members (default: all of them).
          on_step: called with the number of lifetime or critic steps (of the block) just
            completed.
          critic_key: the key of the critic episodes and critics (``fixed_critics``: the
            same every generation); None: the generation's own.
          pools: the images to sample from (``Evolution.put_pools``); None: the
            evolution's own.
        """
        pools = self.evo.pools if pools is None else pools
        train_images, val_images = pools.train, pools.val
        c = self.evo.config
        size = c.pop_size
        hi = size if hi is None else hi
        block = (lambda x: x) if (lo, hi) == (0, size) else (lambda x: x[lo:hi])
        host_key, task_key, life_key, generation_critic_key, _ = generation_keys(key)
        if critic_key is None:
            critic_key = generation_critic_key
        n = hi - lo

        # 1. Hosts: every learngene into a fresh network (its own key).
        hosts = self.hosts(block(jax.random.split(host_key, size)), learngenes)
        # 2. Lifetime learning: each individual its own life_way-way task of meta-train classes.
        classes = block(
            self.sample_tasks(jax.random.split(task_key, size), train_images)
        )
        life_losses = []
        for step in range(c.life_steps):
            step_keys = block(
                jax.random.split(jax.random.fold_in(life_key, step), size)
            )
            hosts, loss = self.life_step(step_keys, hosts, classes, train_images)
            life_losses.append(loss)
            if on_step is not None:
                on_step(1.0)
        life_losses = _stack(life_losses) if life_losses else jnp.zeros((1, n))
        # 3. Extraction: what was learned in life is inherited.
        trained = self.extract(hosts)
        # A diverged individual (non-finite loss or learngene) gets NaN fitness: never selected.
        diverged = self.diverged(life_losses, trained)
        # 4. Fitness by critics: the same critic tasks and keys for every individual.
        episodes, critic_keys = self.critic_episodes(critic_key, val_images)
        result = self.critics(
            *_pairs(critic_keys, episodes, trained, n, c.num_critics), on_step=on_step
        )
        # The per-individual scalars on the host (gathered when processes share the work).
        diverged, life_losses, instinct = to_host(
            (diverged, life_losses, result.instinct)
        )
        fitness = _mean_per_member(result.final, c.num_critics)
        return Lives(trained, life_losses, diverged, fitness, instinct)

    def generation(
        self,
        root_key: jax.Array,
        state: EvolutionState,
        on_step: Callable[[float], Any] | None = None,
        *,
        workers: Callable[..., Lives] | None = None,
        pools: Pools | None = None,
    ) -> tuple[EvolutionState, dict[str, Any]]:
        """Runs one generation: ``(key, state) -> (state, metrics)``.

        Args:
          root_key: the run's root key; the generation's key is ``fold_in(root_key, g)``.
          state: the state after ``g`` generations.
          on_step: called with the number of lifetime or critic steps (of the whole
            population) just completed, e.g. ``tqdm.update``.
          workers: computes ``lives`` of the whole population elsewhere, as
            ``workers(key, learngenes, on_step, critic_key)``
            (``gtl_jax.executors.LifeWorkers``: blocks of members in worker processes);
            None: in this process.
          pools: this generation's images (``Evolution.put_pools``: a dataset streamed
            generation by generation); None: the evolution's own. Not with ``workers``,
            which sample from their own.
        """
        if pools is not None and workers is not None:
            raise ValueError("pools are given to this process only, not to its workers")
        if self.strategy == "vmap" and workers is None:
            pools = self.evo.pools if pools is None else pools
            state, metrics = self.pure_step(root_key, state, pools)
            if on_step is not None:
                config = self.evo.config
                on_step(float(config.life_steps + config.critic_steps))
            return state, host_metrics(metrics)
        g = int(state.generation)
        key = jax.random.fold_in(root_key, g)
        next_key = generation_keys(key)[4]
        critic_key = self.evo.critic_key(root_key)
        if workers is None:
            life = self.lives(
                key,
                state.learngenes,
                on_step=on_step,
                critic_key=critic_key,
                pools=pools,
            )
        else:
            life = workers(key, state.learngenes, on_step, critic_key)
        trained, life_losses, diverged = life.trained, life.life_losses, life.diverged
        fitness = np.where(diverged, np.float32(np.nan), life.fitness)
        # ECO's learngene score: the lineage's fitness, decayed. A diverged one scores NaN,
        # which selection ranks last.
        scores = fitness + self.evo.config.score_decay * to_host(state.scores)
        ranked = scores if self.evo.config.selection == "score" else fitness
        # 5-6. Tournaments, elitism, mutation, lineage.
        next_learngenes, parents = self.reproduce(
            next_key, trained, jnp.asarray(ranked)
        )
        next_scores = np.nan_to_num(scores, nan=0.0)[to_host(parents)]
        safe = sanitize_fitness(fitness)
        best = int(jnp.argmax(safe))
        new_state = EvolutionState(
            generation=jnp.int32(g + 1),
            learngenes=next_learngenes,
            parents=parents,
            best_learngene=_member(trained, best),
            best_fitness=jnp.float32(fitness[best]),
            scores=jnp.asarray(next_scores, jnp.float32),
            trained=trained,
            fitness=jnp.asarray(fitness, jnp.float32),
        )
        new_state = self.evo.place(new_state)
        finite = np.isfinite(fitness)
        stat = lambda f: float(f(fitness[finite])) if finite.any() else float("nan")  # noqa: E731
        metrics = {
            "generation": g + 1,
            "fitness_max": stat(np.max),
            "fitness_mean": stat(np.mean),
            "fitness_min": stat(np.min),
            "fitness_ci": stat(lambda f: 1.96 * np.std(f) / np.sqrt(f.size)),
            "fitness": [float(f) for f in fitness],
            "scores": [float(x) for x in scores],
            "diverged": int(diverged.sum()),
            "life_loss_first": float(jnp.nanmean(life_losses[0])),
            "life_loss_last": float(jnp.nanmean(life_losses[-1])),
            "critic_instinct_mean": float(life.instinct.mean()),
            "parents": [int(p) for p in to_host(parents)],
            "best_index": best,
            "diversity": float(self.diversity(next_learngenes)),
        }
        return new_state, metrics
