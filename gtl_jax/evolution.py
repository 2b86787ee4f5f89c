"""The evolutionary loop of GTL: hosts, lifetime learning, extraction, critic fitness,
tournament selection, mutation with elitism, lineage.

Everything here is pure, and a generation is split where evosax splits a strategy:

- ``Evolution.ask``: what the members are asked to do this generation (their keys and
  lifetime tasks, the critics' episodes).
- ``Evolution.evaluate``: steps 1-4, per member: a host inherits the learngene, learns in
  life, passes on its trained circuit, critics fine-tune on it (``evaluate_member``). This is
  the part an execution strategy decides: vmapped here, padded and sharded over devices by
  ``gtl_jax.sharding.Placement``, looped or farmed out to worker processes by
  ``gtl_jax.executors.HostExecutor``.
- ``Evolution.tell``: steps 5-6 and everything a generation reports, written once: the
  lineage score, selection, the elite, mutation, the next state and the metrics. Every
  strategy calls this same function.

``step = tell(evaluate)`` is one whole generation, ``(root_key, state) -> (state,
metrics)``: jit it, scan it over generations (``run``), vmap it over seeds (``evolve``). The
key of generation g is ``fold_in(root_key, g)``, so a resumed run replays the same stream.
The operators (``tournament_select``, ``mutate``, ``reproduce``) are ``gtl_jax.operators``'.
This module never asks how many devices exist and never imports the executors.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from gtl_jax.data.augment import augment_fn
from gtl_jax.data.pool import Episode, sample_batch, sample_classes, sample_episode
from gtl_jax.descendants import Recipe, fine_tune
from gtl_jax.learngene import (
    Learngene,
    LearngeneSpec,
    close_circuit,
    extract_learngene,
    insert_learngene,
)
from gtl_jax.operators import (
    all_finite,
    diversity,
    fitness_statistics,
    inherit_life_genes,
    init_life_genes,
    pairs,
    reproduce,
    sanitize_fitness,
    selection_statistics,
)
from gtl_jax.population import TrainState, init_network, make_optimizer, train_step
from gtl_jax.state import (
    CRITIC_STREAM,
    HYPERPARAMS,
    LIFE_GENE_STREAM,
    SELECTIONS,
    Evaluation,
    EvolutionConfig,
    EvolutionState,
    Pools,
    Tasks,
    generation_keys,
    host_metrics,
)

__all__ = [  # the state's types, importable from here too
    "Evaluation",
    "Evolution",
    "EvolutionConfig",
    "EvolutionState",
    "Pools",
    "SELECTIONS",
    "Tasks",
    "generation_keys",
    "host_metrics",
]


class Evolution:
    """One configuration's pure functions: per member, and the whole generation (``step``).

    Args:
      life_model: the host network (with an ``life_way`` head).
      critic_model: the critic network (with a ``critic_way`` head).
      spec: the learngene spec shared by both.
      config: the loop's sizes and knobs.
      critic_recipe: how critics fine-tune.
      train_images: u8[C_train, M, H, W, Ch] meta-train pool (lifetime tasks).
      val_images: u8[C_val, M, H, W, Ch] meta-validation pool (critic tasks).

    The per-member functions, which every execution composes: ``random_gene_fn(key)``,
    ``host_fn(key, learngene)`` (a fresh host with the learngene inserted),
    ``life_step_fn(key, state, classes, images)`` (one lifetime step),
    ``extract_fn(state)`` and ``critic_fn(key, episode, learngene)`` (one critic,
    ``fine_tune``).
    """

    def __init__(
        self,
        life_model: nn.Module,
        critic_model: nn.Module,
        spec: LearngeneSpec,
        config: EvolutionConfig,
        critic_recipe: Recipe,
        train_images: jax.Array,
        val_images: jax.Array,
    ):
        for name, model, way in (
            ("life_model", life_model, config.life_way),
            ("critic_model", critic_model, config.critic_way),
        ):
            if getattr(model, "num_classes", way) != way:
                raise ValueError(
                    f"{name} has a {model.num_classes}-class head, the config's tasks are "
                    f"{way}-way (life_way={config.life_way}, critic_way={config.critic_way})"
                )
        self.config, self.spec = config, spec
        self.life_model, self.critic_model = life_model, critic_model
        self.critic_recipe = critic_recipe
        # Where the pools live is the runtime's choice (``gtl_jax.sharding``); here they
        # are arrays the pure functions take as arguments (``pools``).
        self.train_images, self.val_images = (
            jnp.asarray(train_images),
            jnp.asarray(val_images),
        )
        self.image_shape = tuple(train_images.shape[2:])
        c = config
        hyperparams = {
            "learning_rate": c.life_lr,
            "momentum": c.life_momentum,
            "weight_decay": c.life_weight_decay,
        }
        if c.gene_names:
            # Life genes: the optimiser's hyperparameters are state of the optimiser
            # (optax.inject_hyperparams), so one vmapped (or looped) step trains members
            # with different values without compiling again.
            tx = optax.inject_hyperparams(
                functools.partial(make_optimizer, c.life_optimizer)
            )(**hyperparams)
        else:
            tx = make_optimizer(c.life_optimizer, **hyperparams)

        def host_fn(key, learngene, life_genes=None):
            state = init_network(life_model, tx, key, self.image_shape)
            params, batch_stats = insert_learngene(
                learngene, state.params, state.batch_stats, zero_cross=c.zero_cross
            )
            opt_state = tx.init(params)
            if life_genes:
                hp = dict(opt_state.hyperparams)
                for name, value in life_genes.items():
                    hp[HYPERPARAMS[name]] = jnp.asarray(value, jnp.float32)
                opt_state = opt_state._replace(hyperparams=hp)
            return TrainState(params, batch_stats, opt_state)

        def random_gene_fn(key):
            state = init_network(life_model, tx, key, self.image_shape)
            return extract_learngene(spec, state.params, state.batch_stats)

        augment = augment_fn(c.augment, self.image_shape[0])

        def life_train_step(key, state, classes, images):
            if augment is None:
                # No augmentation: the key stream is exactly what it was before augment existed.
                x, y = sample_batch(key, images, classes, batch_size=c.life_batch)
                return train_step(life_model, tx, state, x, y)
            batch_key, augment_key = jax.random.split(key)
            x, y = sample_batch(batch_key, images, classes, batch_size=c.life_batch)
            return train_step(
                life_model, tx, state, x, y, key=augment_key, augment_fn=augment
            )

        def life_step_fn(key, state, classes, images):
            state, loss = life_train_step(key, state, classes, images)
            if c.life_closed:
                state = state.replace(params=close_circuit(spec, state.params))
            return state, loss

        def extract_fn(state):
            return extract_learngene(spec, state.params, state.batch_stats)

        def critic_fn(key, episode, learngene):
            return fine_tune(
                critic_model,
                critic_recipe,
                key,
                episode,
                learngene,
                n_way=c.critic_way,
                zero_cross=c.zero_cross,
                curve=False,
            )

        # The pure functions of one member, which every execution composes: the pure
        # generation (``step``) vmaps them; host executors loop over members with them.
        self.host_fn, self.random_gene_fn = host_fn, random_gene_fn
        self.life_step_fn, self.extract_fn, self.critic_fn = (
            life_step_fn,
            extract_fn,
            critic_fn,
        )

        self._random_genes = jax.jit(jax.vmap(random_gene_fn))

    # ----------------------------------------------------------------- pools and state

    @property
    def pools(self) -> Pools:
        """The pools this evolution was built with (pass them to the pure functions)."""
        return Pools(self.train_images, self.val_images)

    def put_pools(self, train: Any = None, val: Any = None) -> Pools:
        """Pools for the pure functions: ``train`` and ``val`` (host or device arrays;
        None: the evolution's own). A dataset streamed generation by generation hands each
        generation's pools to ``step`` this way (``HostExecutor.put_pools`` also places
        them on the devices).

        Raises:
          ValueError: a pool's shape or dtype differs from the evolution's own (the jitted
            generation would compile again for every new shape).
        """
        checked = []
        for name, new, own in (
            ("train", train, self.train_images),
            ("val", val, self.val_images),
        ):
            if new is not None and (
                tuple(new.shape) != tuple(own.shape) or new.dtype != own.dtype
            ):
                raise ValueError(
                    f"the {name} pool is {new.dtype}{list(new.shape)}; the evolution's "
                    f"is {own.dtype}{list(own.shape)}"
                )
            checked.append(own if new is None else jnp.asarray(new))
        return Pools(*checked)

    def init(self, key: jax.Array) -> EvolutionState:
        """Generation 0: the circuits of P randomly initialised networks (and, with
        ``life_genes``, their hosts' lifetime hyperparameters, spread around the config's).
        Pure."""
        c = self.config
        size = c.pop_size
        learngenes = self._random_genes(jax.random.split(key, size))
        life_genes = None
        if c.gene_names:
            life_genes = init_life_genes(
                jax.random.fold_in(key, LIFE_GENE_STREAM),
                c.gene_values(),
                size,
                spread=c.life_gene_spread,
            )
        return EvolutionState(
            generation=jnp.int32(0),
            learngenes=learngenes,
            parents=jnp.arange(size, dtype=jnp.int32),
            best_learngene=jax.tree.map(lambda x: x[0], learngenes),
            best_fitness=jnp.float32(-jnp.inf),
            scores=jnp.zeros((size,), jnp.float32),
            trained=learngenes,
            fitness=jnp.full((size,), jnp.nan, jnp.float32),
            life_genes=life_genes,
        )

    # ----------------------------------------------------------------- ask

    def sample_tasks(self, keys: jax.Array, train_images: jax.Array) -> jax.Array:
        """One lifetime task per key: i32[len(keys), life_way] meta-train classes. Pure."""
        num_classes, way = train_images.shape[0], self.config.life_way
        return jax.vmap(lambda k: sample_classes(k, num_classes, way))(keys)

    def sample_critic_episodes(self, keys: jax.Array, val_images: jax.Array) -> Episode:
        """One critic episode per key (leading axis: the keys). Pure."""
        c = self.config
        return jax.vmap(
            lambda k: sample_episode(
                k,
                val_images,
                n_way=c.critic_way,
                k_shot=c.critic_shot,
                n_query=c.critic_query,
            )
        )(keys)

    def critic_episodes(
        self, critic_key: jax.Array, val_images: jax.Array
    ) -> tuple[Episode, jax.Array]:
        """The critics' episodes (leading axis ``num_critics``) and keys. Pure."""
        n = self.config.num_critics
        episode_key, init_key = jax.random.split(critic_key)
        episodes = self.sample_critic_episodes(
            jax.random.split(episode_key, n), val_images
        )
        return episodes, jax.random.split(init_key, n)

    def critic_key(self, root_key: jax.Array) -> jax.Array | None:
        """The key of every generation's critics with ``fixed_critics``; else None (each
        generation draws its own)."""
        if not self.config.fixed_critics:
            return None
        return jax.random.fold_in(root_key, CRITIC_STREAM)

    def ask(
        self, root_key: jax.Array, generation: jax.Array, pools: Pools | None = None
    ) -> Tasks:
        """What the members of generation ``generation`` are asked to do: their keys and
        lifetime tasks, and the critics' episodes. Pure; the keys come from
        ``fold_in(root_key, generation)``, so any strategy computes the same members."""
        pools = self.pools if pools is None else pools
        c = self.config
        size = c.pop_size
        key = jax.random.fold_in(root_key, generation)
        host_key, task_key, life_key, generation_critic_key, _ = generation_keys(key)
        critic_key = self.critic_key(root_key)
        if critic_key is None:
            critic_key = generation_critic_key
        # Step s of member m draws from split(fold_in(life_key, s), P)[m].
        life_keys = jax.vmap(
            lambda s: jax.random.split(jax.random.fold_in(life_key, s), size),
            out_axes=1,
        )(jnp.arange(c.life_steps))
        episodes, critic_keys = self.critic_episodes(critic_key, pools.val)
        return Tasks(
            host_keys=jax.random.split(host_key, size),
            classes=self.sample_tasks(jax.random.split(task_key, size), pools.train),
            life_keys=life_keys,
            episodes=episodes,
            critic_keys=critic_keys,
        )

    # ----------------------------------------------------------------- evaluate

    def evaluate_member(
        self,
        host_key: jax.Array,
        classes: jax.Array,
        life_keys: jax.Array,
        learngene: Learngene,
        life_genes: dict[str, jax.Array] | None,
        episodes: Episode,
        critic_keys: jax.Array,
        train_images: jax.Array,
    ) -> Evaluation:
        """Steps 1-4 for one member (unbatched fields): the learngene into a fresh host
        (with its life genes, if any), ``life_steps`` of lifetime learning on its task
        (``lax.scan``), the trained circuit extracted, and fine-tuned by each critic on the
        shared episodes. Pure."""
        hosts = self.host_fn(host_key, learngene, life_genes)

        def life_step(hosts, key):
            return self.life_step_fn(key, hosts, classes, train_images)

        hosts, losses = jax.lax.scan(life_step, hosts, life_keys)
        if self.config.life_steps == 0:
            losses = jnp.zeros((1,), jnp.float32)
        trained = self.extract_fn(hosts)
        diverged = (
            ~jnp.all(jnp.isfinite(losses))
            | ~all_finite(jax.tree.map(lambda x: x[None], trained))[0]
        )
        critics = jax.vmap(self.critic_fn, in_axes=(0, 0, None))(
            critic_keys, episodes, trained
        )
        return Evaluation(
            trained=trained,
            life_losses=losses,
            diverged=diverged,
            fitness=critics.final.mean(),
            instinct=critics.instinct,
        )

    def evaluate(
        self,
        root_key: jax.Array,
        state: EvolutionState,
        pools: Pools | None = None,
        *,
        map_members=jax.vmap,
    ) -> Evaluation:
        """Steps 1-4 of generation ``state.generation`` for every member. Pure.

        Args:
          map_members: how the members are computed, called as ``map_members(fn,
            in_axes)``: ``jax.vmap`` (one program of the whole population), or
            ``gtl_jax.sharding.Placement.map_members`` (padded and split over devices).
        """
        pools = self.pools if pools is None else pools
        tasks = self.ask(root_key, state.generation, pools)
        evaluate = map_members(self.evaluate_member, (0, 0, 0, 0, 0, None, None, None))
        return evaluate(
            tasks.host_keys,
            tasks.classes,
            tasks.life_keys,
            state.learngenes,
            state.life_genes,
            tasks.episodes,
            tasks.critic_keys,
            pools.train,
        )

    # ----------------------------------------------------------------- tell

    def tell(
        self, root_key: jax.Array, state: EvolutionState, evaluation: Evaluation
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """Steps 5-6 of generation ``state.generation``, from its members' evaluation: the
        lineage score, tournaments (or the control's random parents), the elite kept, the
        winners' copies mutated; the next state and the generation's metrics. Pure; every
        execution strategy calls this one function.

        Returns:
          The next state and the metrics, arrays (``host_metrics`` turns them into the values
          a run logs): fitness f32[P] (NaN: diverged), its max, mean, min and 95% half-width
          over the finite ones, the selection differential and the response to the last
          generation (``selection_statistics``), lineage scores, parents, the elite's index,
          divergences, lifetime losses, the critics' mean instinct, diversity.
        """
        c = self.config
        key = jax.random.fold_in(root_key, state.generation)
        next_key = generation_keys(key)[4]
        trained, diverged = evaluation.trained, evaluation.diverged
        fitness = jnp.where(diverged, jnp.nan, evaluation.fitness)
        # ECO's learngene score: the lineage's fitness, decayed (NaN: ranked last).
        scores = fitness + c.score_decay * state.scores
        ranked = scores if c.selection == "score" else fitness
        next_learngenes, parents = reproduce(
            next_key,
            trained,
            ranked,
            tournament_size=c.tournament_size,
            sigma=c.mutation_sigma,
            rate=c.mutation_rate,
            selection=c.selection,
        )
        best = jnp.argmax(sanitize_fitness(fitness)).astype(jnp.int32)
        life_genes, gene_metrics = state.life_genes, {}
        if life_genes is not None:
            # Inherited with the learngene from the same parent, then explored.
            gene_metrics = {
                **{f"life_{n}_mean": v.mean() for n, v in life_genes.items()},
                **{f"life_genes/{n}": v for n, v in life_genes.items()},
            }
            life_genes = inherit_life_genes(
                jax.random.fold_in(next_key, LIFE_GENE_STREAM),
                life_genes,
                parents,
                sigma=c.life_gene_sigma,
            )
        new_state = EvolutionState(
            generation=state.generation + 1,
            learngenes=next_learngenes,
            parents=parents,
            best_learngene=jax.tree.map(lambda x: x[best], trained),
            best_fitness=fitness[best],
            scores=jnp.nan_to_num(scores, nan=0.0)[parents],
            trained=trained,
            fitness=fitness,
            life_genes=life_genes,
        )
        metrics = {
            "generation": state.generation + 1,
            **fitness_statistics(fitness),
            **selection_statistics(fitness, parents, state.fitness),
            "fitness": fitness,
            "scores": scores,
            "diverged": diverged.sum(),
            "life_loss_first": jnp.nanmean(evaluation.life_losses[:, 0]),
            "life_loss_last": jnp.nanmean(evaluation.life_losses[:, -1]),
            "critic_instinct_mean": evaluation.instinct.mean(),
            "parents": parents,
            "best_index": best,
            "diversity": diversity(next_learngenes),
            **gene_metrics,
        }
        return new_state, metrics

    # ----------------------------------------------------------------- whole generations

    def step(
        self, root_key: jax.Array, state: EvolutionState, pools: Pools | None = None
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """One generation as one pure function: ``tell(evaluate)``, every member vmapped
        (the form for GPU/TPU, where one program of the whole population beats a loop of
        small ones).

        ``jax.jit`` it, ``lax.scan`` it over generations (``run``), ``jax.vmap`` it over
        seeds (``evolve``).

        Args:
          root_key: the run's root key.
          state: the state after g generations.
          pools: the image pools; None: the evolution's own, which a jit then embeds as
            constants (pass ``evo.pools`` as an argument).
        """
        evaluation = self.evaluate(root_key, state, pools)
        return self.tell(root_key, state, evaluation)

    def run(
        self,
        root_key: jax.Array,
        state: EvolutionState,
        pools: Pools | None = None,
        *,
        generations: int,
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """``generations`` generations of ``step`` in one ``lax.scan``; metrics stacked
        along a leading generation axis. Pure (``generations`` static)."""

        def body(state, _):
            return self.step(root_key, state, pools)

        return jax.lax.scan(body, state, None, length=generations)

    def evolve(
        self,
        key: jax.Array,
        pools: Pools | None = None,
        *,
        generations: int | None = None,
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """A whole evolution from one key, as ``python -m gtl_jax.evolve`` seeds it
        (``init_key, root_key = split(key)``). Pure: ``jax.jit(jax.vmap(evo.evolve,
        in_axes=(0, None)), static_argnames="generations")(keys, evo.pools)`` evolves one
        population per key in one program."""
        init_key, root_key = jax.random.split(key)
        generations = self.config.generations if generations is None else generations
        return self.run(root_key, self.init(init_key), pools, generations=generations)

    # ----------------------------------------------------------------- the final choice

    def choose_final(
        self,
        key: jax.Array,
        state: EvolutionState,
        pools: Pools | None = None,
        *,
        candidates: int,
        episodes: int,
        critics_fn: Any = None,
    ) -> tuple[int, dict[str, Any]]:
        """The member of the last generation whose trained learngene the run passes on.

        With selection, the ``candidates`` fittest are re-scored by critics on ``episodes``
        fixed meta-validation episodes (the same for each; drawn from ``key``) and the best
        re-scored one is chosen: a generation's fitness, a few critic episodes, ranks
        near-equal learngenes by chance. With ``selection="none"`` a member drawn at random
        (the control chooses as it reproduces).

        Args:
          state: a state with P members whose arrays every process can read (one device,
            or ``Placement.logical``).
          critics_fn: computes the critics of (key, episode, learngene) triples, each with
            a leading axis; None: ``critic_fn`` vmapped (an executor passes its own).

        Returns ``(index, info)``: info holds the candidates and their re-scored fitness.
        """
        pools = self.pools if pools is None else pools
        size = self.config.pop_size
        choose_key, episode_key, init_key = jax.random.split(key, 3)
        if self.config.selection == "none":
            index = int(jax.random.randint(choose_key, (), 0, size))
            return index, {"chosen": index, "rule": "random member"}
        fitness = np.asarray(jax.device_get(sanitize_fitness(state.fitness)))
        order = [int(i) for i in np.argsort(-fitness, kind="stable")[:candidates]]
        if episodes < 1 or len(order) == 1:
            return order[0], {"chosen": order[0], "rule": "fittest"}
        n = len(order)
        critics_fn = critics_fn or jax.jit(jax.vmap(self.critic_fn))
        sampled = jax.jit(self.sample_critic_episodes)(
            jax.random.split(episode_key, episodes), pools.val
        )
        genes = _rows(state.trained, np.array(order))
        keys = jax.random.split(init_key, episodes)
        result = critics_fn(*_pairs(keys, sampled, genes, n, episodes))
        rescored = np.asarray(jax.device_get(result.final)).reshape(n, episodes)
        rescored = rescored.mean(axis=1)
        index = order[int(np.argmax(rescored))]
        return index, {
            "chosen": index,
            "rule": f"best of the {n} fittest re-scored on {episodes} episodes",
            "candidates": order,
            "rescored": [float(f) for f in rescored],
        }


# Host code moves multi-device arrays only through jitted functions: an eager op on a
# replicated population (one small program per op) was seen to deadlock XLA CPU's
# collectives on several devices.
_rows = jax.jit(lambda tree, rows: jax.tree.map(lambda x: x[rows], tree))
_pairs = jax.jit(pairs, static_argnums=(3, 4))
