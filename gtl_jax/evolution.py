"""The evolutionary loop of GTL: hosts, lifetime learning, extraction, critic
fitness, tournament selection, mutation with elitism, lineage.

Everything here is pure. The operators (``tournament_select``, ``mutate``, ``reproduce``)
are jittable functions of one key and arrays. ``Evolution`` is built once from the models, the
learngene spec, the config and the image pools; its ``step(root_key, state) -> (state,
metrics)`` is one whole generation, which can be jitted, scanned over generations (``run``)
and vmapped over seeds (``evolve``). The key of generation g is ``fold_in(root_key, g)``, so a
resumed run replays the same stream.

How a generation runs on a machine is not decided here: ``step`` vmaps every member (the
GPU/TPU form), and ``gtl_jax.executors.HostExecutor`` drives the same per-member functions
from the host (the faster form on CPU). This module never imports the executors.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from gtl_jax.data.augment import AUGMENTATIONS, augment_fn
from gtl_jax.data.pool import Episode, sample_batch, sample_classes, sample_episode
from gtl_jax.descendants import Recipe, fine_tune
from gtl_jax.learngene import (
    Learngene,
    LearngeneSpec,
    close_circuit,
    extract_learngene,
    insert_learngene,
    parameter_keys,
)
from gtl_jax.population import (
    OPTIMIZERS,
    TrainState,
    init_network,
    make_optimizer,
    population_mesh,
    population_sharding,
    replicate,
    replicated_sharding,
    train_step,
)

# --------------------------------------------------------------------------- operators


def sanitize_fitness(fitness: jax.Array) -> jax.Array:
    """NaN or infinite fitness becomes ``-inf``: the worst possible, never selected over a number."""
    return jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)


def tournament_select(
    key: jax.Array, fitness: jax.Array, *, tournament_size: int
) -> jax.Array:
    """Shuffles the population into groups of ``tournament_size``; the fittest of each wins.

    Args:
      key: PRNG key.
      fitness: f32[P], higher is better; NaN/inf count as the worst.
      tournament_size: k; P must be divisible by k.

    Returns:
      i32[P // k], the index of each group's winner. Ties go to the first in the shuffled group;
      a group whose fitness values are all non-finite sends the population's best.
    """
    size = fitness.shape[0]
    if size % tournament_size:
        raise ValueError(
            f"population size {size} is not divisible by tournament_size {tournament_size}"
        )
    safe = sanitize_fitness(fitness)
    groups = jax.random.permutation(key, size).reshape(-1, tournament_size)
    scores = safe[groups]
    winners = groups[jnp.arange(groups.shape[0]), jnp.argmax(scores, axis=1)]
    # A group with no finite fitness sends the population's best instead: a NaN or infinite
    # individual never wins while any individual is finite.
    winners = jnp.where(jnp.isfinite(scores.max(axis=1)), winners, jnp.argmax(safe))
    return winners.astype(jnp.int32)


def mutate(
    key: jax.Array, learngene: Learngene, *, sigma: float, rate: float
) -> Learngene:
    """Gaussian mutation of one learngene, scaled to each tensor's standard deviation.

    Each parameter tensor (kernel, BN scale and bias, a ViT's embeddings and LayerNorm
    parameters; never the running statistics) is perturbed with probability ``rate`` by
    ``sigma * std(tensor) * N(0, 1)``. ``sigma = 0`` is the identity.
    """
    # All tensors share one flat normal draw: one RNG call compiles in a fraction of a second,
    # where one call per tensor under vmap took over 20 s of XLA CPU compile time.
    slots = [
        (name, k) for name in sorted(learngene) for k in parameter_keys(learngene[name])
    ]
    tensors = [learngene[name][k] for name, k in slots]
    sizes = np.array([t.size for t in tensors])
    apply_key, noise_key = jax.random.split(key)
    apply = jax.random.bernoulli(apply_key, rate, (len(slots),))
    scale = sigma * jnp.stack([jnp.std(t) for t in tensors]) * apply
    flat = jnp.concatenate([t.ravel() for t in tensors])
    noise = jax.random.normal(noise_key, flat.shape, flat.dtype)
    flat = flat + jnp.repeat(scale, sizes, total_repeat_length=int(sizes.sum())) * noise
    out = {name: dict(gene) for name, gene in learngene.items()}
    for (name, k), t, piece in zip(
        slots, tensors, jnp.split(flat, np.cumsum(sizes)[:-1])
    ):
        out[name][k] = piece.reshape(t.shape)
    return out


def reproduce(
    key: jax.Array,
    learngenes: Learngene,
    fitness: jax.Array,
    *,
    tournament_size: int,
    sigma: float,
    rate: float,
    selection: str = "tournament",
) -> tuple[Learngene, jax.Array]:
    """The next generation: the best learngene unchanged, then mutated copies of the winners.

    Args:
      learngenes: a stacked learngene, leading axis P.
      fitness: f32[P], what selection ranks (fitness, or a lineage score).
      selection: "tournament", or "none": every parent drawn uniformly at random (the
        control that isolates what selection adds; ``fitness`` is ignored).

    Returns:
      ``(next_learngenes, parents: i32[P])``; slot 0 holds the elite, slot i > 0 a mutated copy
      of winner ``i - 1 mod (P // k)``.
    """
    select_key, mutate_key = jax.random.split(key)
    size = fitness.shape[0]
    if selection == "none":
        # The no-selection control: the same reproduction and mutation, parents drawn
        # uniformly at random (slot 0 an unmutated copy, as the elite's would be).
        parents = jax.random.randint(select_key, (size,), 0, size, jnp.int32)
    else:
        elite = jnp.argmax(sanitize_fitness(fitness)).astype(jnp.int32)
        winners = tournament_select(
            select_key, fitness, tournament_size=tournament_size
        )
        parents = jnp.concatenate(
            [elite[None], winners[jnp.arange(size - 1) % winners.shape[0]]]
        )
    children = jax.tree.map(lambda x: x[parents], learngenes)
    mutated = jax.vmap(functools.partial(mutate, sigma=sigma, rate=rate))(
        jax.random.split(mutate_key, size), children
    )
    is_elite = jnp.arange(size) == 0
    next_learngenes = jax.tree.map(
        lambda m, c: jnp.where(is_elite.reshape((-1,) + (1,) * (m.ndim - 1)), c, m),
        mutated,
        children,
    )
    return next_learngenes, parents


def pairs(keys, episodes, genes, members: int, per_member: int):
    """Every (member, episode) pair, member-major: the keys and episodes tiled ``members``
    times, the stacked genes each repeated ``per_member`` times. Pure."""
    tile = lambda x: jnp.tile(x, (members,) + (1,) * (x.ndim - 1))  # noqa: E731
    repeat = lambda x: jnp.repeat(x, per_member, axis=0)  # noqa: E731
    return tile(keys), jax.tree.map(tile, episodes), jax.tree.map(repeat, genes)


def all_finite(learngenes: Learngene) -> jax.Array:
    """bool[P]: whether every value of each individual's learngene is finite."""
    return jnp.stack(
        [
            jnp.isfinite(x).reshape(x.shape[0], -1).all(1)
            for x in jax.tree.leaves(learngenes)
        ]
    ).all(0)


def diversity(learngenes: Learngene) -> jax.Array:
    """Mean over layers of the across-population std of the kernel, relative to its std."""
    values = [
        jnp.mean(jnp.std(gene["kernel"], axis=0)) / (jnp.std(gene["kernel"]) + 1e-12)
        for gene in learngenes.values()
        if "kernel" in gene
    ]
    return jnp.mean(jnp.stack(values))


def generation_keys(key: jax.Array) -> jax.Array:
    """A generation's keys: hosts, tasks, lifetime steps, critics, reproduction."""
    return jax.random.split(key, 5)


# --------------------------------------------------------------------------- state


@struct.dataclass
class EvolutionState:
    """Everything a run needs to continue; every array of ``learngenes`` has a leading P.

    Attributes:
      generation: i32[], the number of generations completed.
      learngenes: the learngenes of the next hosts (stacked, leading P).
      parents: i32[P], lineage: the index (in the previous generation) of each one's parent.
      best_learngene: the fittest trained learngene of the last completed generation.
      best_fitness: f32[], its fitness.
      scores: f32[P], the lineage score each next host inherits from its parent
        (``selection="score"``; zeros otherwise).
      trained: the trained learngenes of the last completed generation (stacked, leading
        P), from which the final learngene is chosen (``choose_final``).
      fitness: f32[P], their fitness (NaN for diverged ones).
    """

    generation: jax.Array
    learngenes: Learngene
    parents: jax.Array
    best_learngene: Learngene
    best_fitness: jax.Array
    scores: jax.Array
    trained: Learngene
    fitness: jax.Array


@struct.dataclass
class Pools:
    """The images a generation samples from: an argument of the pure functions, so that a
    jitted generation takes the pools as inputs instead of embedding them as constants.

    Attributes:
      train: u8[C_train, M, H, W, Ch], the meta-train classes (lifetime tasks).
      val: u8[C_val, M, H, W, Ch], the meta-validation classes (critic episodes).
    """

    train: jax.Array
    val: jax.Array


def host_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A generation's array metrics (``Evolution.step``) as the JSON-ready values a run logs:
    Python numbers and lists."""
    m = jax.device_get(metrics)
    out = {}
    for k, v in m.items():
        v = np.asarray(v)
        if v.ndim:
            out[k] = v.tolist()
        elif v.dtype.kind in "iub":
            out[k] = int(v)
        else:
            out[k] = float(v)
    return out


# What tournaments rank: raw fitness; the lineage score (ECO's learngene score: fitness plus
# the parent's score decayed by score_decay); or nothing (parents drawn at random: a control).
SELECTIONS = ("tournament", "score", "none")
# The stream of the fixed critic episodes (fixed_critics), folded into the root key.
CRITIC_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """The sizes and knobs of the loop; the defaults are the default config's
    (``configs/omniglot.py`` builds its ``evolution`` section from them).

    Attributes (beyond the sizes):
      generations: G, the number of generations a run evolves.
      life_optimizer: "sgd" (with ``life_momentum``) or "adam" (ViTs learn little in a
        lifetime with SGD), at ``life_lr`` with ``life_weight_decay`` as L2.
      critic_steps: fine-tuning steps of each critic (the critics otherwise follow the
        descendants' recipe).
      life_closed: keep the weights from non-gene inputs into gene outputs at zero during
        lifetime learning, so the circuit a host trains is the closed sub-network it passes
        on (otherwise extraction cuts weights the circuit relied on in life).
      fixed_critics: every generation's critics fine-tune on the same meta-validation
        episodes and keys (drawn from the root key), so fitness is comparable across
        generations; otherwise each generation draws new ones.
      selection: "tournament" (on fitness), "score" (on the lineage score) or "none".
      score_decay: the weight of the parent's score in a child's lineage score.
      final_candidates: the fittest members of the last generation re-scored before the
        final learngene is chosen (``HostExecutor.choose_final``).
      rescore_episodes: the meta-validation episodes they are re-scored on (0: the fittest
        is chosen).

    Raises:
      ValueError: a field is impossible; the message starts with ``field=value:``.
    """

    pop_size: int = dataclasses.field(
        default=9, metadata={"help": "population size P (divisible by tournament_size)"}
    )
    tournament_size: int = dataclasses.field(
        default=3, metadata={"help": "tournament group size k"}
    )
    generations: int = dataclasses.field(
        default=8, metadata={"help": "number of generations G"}
    )
    life_way: int = dataclasses.field(
        default=50, metadata={"help": "classes per lifetime task (N_life)"}
    )
    life_steps: int = dataclasses.field(
        default=100, metadata={"help": "optimizer steps of lifetime learning (S_life)"}
    )
    life_batch: int = dataclasses.field(
        default=32, metadata={"help": "lifetime batch size"}
    )
    life_optimizer: str = dataclasses.field(
        default="sgd",
        metadata={"help": "lifetime optimizer: sgd (with momentum) or adam"},
    )
    life_lr: float = dataclasses.field(
        default=0.05, metadata={"help": "lifetime learning rate"}
    )
    life_momentum: float = dataclasses.field(
        default=0.9, metadata={"help": "lifetime SGD momentum (sgd only)"}
    )
    life_weight_decay: float = dataclasses.field(
        default=5e-4, metadata={"help": "lifetime weight decay"}
    )
    num_critics: int = dataclasses.field(
        default=4, metadata={"help": "critic networks per individual (C)"}
    )
    critic_way: int = dataclasses.field(
        default=5,
        metadata={"help": "ways of critic episodes (meta-validation classes)"},
    )
    critic_shot: int = dataclasses.field(
        default=1, metadata={"help": "shots of critic episodes"}
    )
    critic_query: int = dataclasses.field(
        default=15, metadata={"help": "queries per class of critic episodes"}
    )
    critic_steps: int = dataclasses.field(
        default=20, metadata={"help": "fine-tuning steps of each critic (S_critic)"}
    )
    mutation_sigma: float = dataclasses.field(
        default=0.1, metadata={"help": "mutation noise, relative to each tensor's std"}
    )
    mutation_rate: float = dataclasses.field(
        default=0.5, metadata={"help": "probability that a tensor is mutated"}
    )
    zero_cross: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "zero the weights from non-gene inputs into gene outputs at insertion"
        },
    )
    augment: str = dataclasses.field(
        default="none",
        metadata={
            "help": "lifetime augmentation, on device: none or crop_flip (pad S//8, crop, "
            "flip)"
        },
    )
    life_closed: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "keep the weights from non-gene into gene channels at zero during "
            "lifetime learning (the circuit a host trains is the one it passes on)"
        },
    )
    fixed_critics: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "critics fine-tune on the same meta-validation episodes every generation "
            "(fitness comparable across generations)"
        },
    )
    selection: str = dataclasses.field(
        default="tournament",
        metadata={
            "help": "what tournaments rank: tournament (fitness), score (ECO's lineage score) "
            "or none (parents drawn at random: the no-selection control)"
        },
    )
    score_decay: float = dataclasses.field(
        default=0.6,
        metadata={"help": "lineage score: fitness plus this times the parent's score"},
    )
    final_candidates: int = dataclasses.field(
        default=3,
        metadata={
            "help": "the fittest members of the last generation re-scored before the final "
            "learngene is chosen"
        },
    )
    rescore_episodes: int = dataclasses.field(
        default=100,
        metadata={
            "help": "meta-validation episodes the final candidates are re-scored on (0: the "
            "fittest is chosen)"
        },
    )

    def __post_init__(self):
        def need(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        for field in (
            "pop_size",
            "tournament_size",
            "generations",
            "life_way",
            "life_batch",
            "num_critics",
            "critic_way",
            "critic_shot",
            "critic_query",
            "final_candidates",
        ):
            need(int(getattr(self, field)) >= 1, field, "must be >= 1")
        for field in ("life_steps", "critic_steps", "rescore_episodes"):
            need(int(getattr(self, field)) >= 0, field, "must be >= 0")
        need(
            self.pop_size % self.tournament_size == 0,
            "pop_size",
            f"must be divisible by tournament_size={self.tournament_size}",
        )
        need(self.mutation_sigma >= 0, "mutation_sigma", "must be >= 0")
        need(0 <= self.mutation_rate <= 1, "mutation_rate", "must be in [0, 1]")
        need(
            self.augment in AUGMENTATIONS, "augment", f"must be one of {AUGMENTATIONS}"
        )
        need(
            self.life_optimizer in OPTIMIZERS,
            "life_optimizer",
            f"must be one of {OPTIMIZERS}",
        )
        need(self.selection in SELECTIONS, "selection", f"must be one of {SELECTIONS}")
        need(0 <= self.score_decay <= 1, "score_decay", "must be in [0, 1]")


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
        # Several devices: the population is sharded over them (``place``) and the pools,
        # which every member samples from, are replicated onto each device once.
        self.mesh = population_mesh()
        train_images, val_images = replicate((train_images, val_images), self.mesh)
        self.train_images, self.val_images = train_images, val_images
        self.image_shape = tuple(train_images.shape[2:])
        c = config
        tx = make_optimizer(
            c.life_optimizer,
            c.life_lr,
            momentum=c.life_momentum,
            weight_decay=c.life_weight_decay,
        )

        def host_fn(key, learngene):
            state = init_network(life_model, tx, key, self.image_shape)
            params, batch_stats = insert_learngene(
                learngene, state.params, state.batch_stats, zero_cross=c.zero_cross
            )
            return TrainState(params, batch_stats, tx.init(params))

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

    # ----------------------------------------------------------------- the pure generation

    @property
    def pools(self) -> Pools:
        """The pools this evolution was built with (pass them to the pure functions)."""
        return Pools(self.train_images, self.val_images)

    def put_pools(self, train: Any = None, val: Any = None) -> Pools:
        """Pools for the pure functions, placed as the evolution's own are (replicated on
        every device of the mesh; each process fills its own devices from its copy, so every
        process must pass the same images): ``train`` and ``val`` (host or device arrays;
        None: the evolution's own). A dataset streamed generation by generation hands each
        generation's pools to ``step`` (or ``HostExecutor.generation``) this way.

        Raises:
          ValueError: a pool's shape or dtype differs from the evolution's own (the jitted
            generation would compile again for every new shape).
        """
        placed = []
        for name, new, own in (
            ("train", train, self.train_images),
            ("val", val, self.val_images),
        ):
            if new is None:
                placed.append(own)
                continue
            if tuple(new.shape) != tuple(own.shape) or new.dtype != own.dtype:
                raise ValueError(
                    f"the {name} pool is {new.dtype}{list(new.shape)}; the evolution's "
                    f"is {own.dtype}{list(own.shape)}"
                )
            placed.append(
                jax.device_put(new) if self.mesh is None else replicate(new, self.mesh)
            )
        return Pools(*placed)

    def init(self, key: jax.Array) -> EvolutionState:
        """Generation 0: the circuits of P randomly initialised networks. Pure."""
        size = self.config.pop_size
        learngenes = self._random_genes(jax.random.split(key, size))
        best = jax.tree.map(lambda x: x[0], learngenes)
        state = EvolutionState(
            generation=jnp.int32(0),
            learngenes=learngenes,
            parents=jnp.arange(size, dtype=jnp.int32),
            best_learngene=best,
            best_fitness=jnp.float32(-jnp.inf),
            scores=jnp.zeros((size,), jnp.float32),
            trained=learngenes,
            fitness=jnp.full((size,), jnp.nan, jnp.float32),
        )
        return self.place(state)

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

    def step(
        self, root_key: jax.Array, state: EvolutionState, pools: Pools | None = None
    ) -> tuple[EvolutionState, dict[str, jax.Array]]:
        """One generation as one pure function: ``(key, state) -> (state, metrics)``.

        Hosts inherit, learn in life (``lax.scan`` over the lifetime steps), pass on their
        trained circuits, critics fine-tune on them (vmapped), tournaments select, the elite
        is kept, the winners' copies mutate. Every member is vmapped: the form for GPU/TPU,
        where one program of the whole population beats a loop of small ones; on CPU a host
        executor (``gtl_jax.executors``) runs the same per-member functions faster.

        ``jax.jit`` it, ``lax.scan`` it over generations (``run``), ``jax.vmap`` it over
        seeds (``evolve``). The key of generation g is ``fold_in(root_key, g)``, as in the
        host executors, which compute the same numbers up to float rounding.

        Args:
          root_key: the run's root key.
          state: the state after g generations.
          pools: the image pools; None: the evolution's own, which a jit then embeds as
            constants (pass ``evo.pools`` as an argument for large pools).

        Returns:
          The next state and the generation's metrics, arrays (``host_metrics`` turns them
          into the values a run logs): fitness f32[P] (NaN: diverged), its max, mean, min
          and 95% half-width over the finite ones, lineage scores, parents, the elite's
          index, divergences, lifetime losses, the critics' mean instinct, diversity.
        """
        pools = self.pools if pools is None else pools
        c = self.config
        size = c.pop_size
        key = jax.random.fold_in(root_key, state.generation)
        host_key, task_key, life_key, generation_critic_key, next_key = generation_keys(
            key
        )
        critic_key = self.critic_key(root_key)
        if critic_key is None:
            critic_key = generation_critic_key

        # 1. Hosts: every learngene into a fresh network (its own key).
        hosts = jax.vmap(self.host_fn)(
            jax.random.split(host_key, size), state.learngenes
        )
        # 2. Lifetime learning: each its own life_way-way task of meta-train classes.
        classes = self.sample_tasks(jax.random.split(task_key, size), pools.train)

        def life_step(hosts, step):
            keys = jax.random.split(jax.random.fold_in(life_key, step), size)
            return jax.vmap(self.life_step_fn, in_axes=(0, 0, 0, None))(
                keys, hosts, classes, pools.train
            )

        hosts, life_losses = jax.lax.scan(life_step, hosts, jnp.arange(c.life_steps))
        if c.life_steps == 0:
            life_losses = jnp.zeros((1, size), jnp.float32)
        # 3. Extraction: what was learned in life is inherited.
        trained = jax.vmap(self.extract_fn)(hosts)
        diverged = ~jnp.all(jnp.isfinite(life_losses), axis=0) | ~all_finite(trained)
        # 4. Fitness by critics: the same critic episodes and keys for every member.
        episodes, critic_keys = self.critic_episodes(critic_key, pools.val)
        result = jax.vmap(self.critic_fn)(
            *pairs(critic_keys, episodes, trained, size, c.num_critics)
        )
        fitness = result.final.reshape(size, c.num_critics).mean(axis=1)
        # 5-6. Tournaments, elitism, mutation, lineage.
        return self._advance(
            next_key, state, trained, life_losses, diverged, fitness, result.instinct
        )

    def _advance(self, key, state, trained, life_losses, diverged, fitness, instinct):
        """Steps 5-6 of the pure generation and its metrics."""
        c = self.config
        fitness = jnp.where(diverged, jnp.nan, fitness)
        # ECO's learngene score: the lineage's fitness, decayed (NaN: ranked last).
        scores = fitness + c.score_decay * state.scores
        ranked = scores if c.selection == "score" else fitness
        next_learngenes, parents = reproduce(
            key,
            trained,
            ranked,
            tournament_size=c.tournament_size,
            sigma=c.mutation_sigma,
            rate=c.mutation_rate,
            selection=c.selection,
        )
        best = jnp.argmax(sanitize_fitness(fitness)).astype(jnp.int32)
        new_state = EvolutionState(
            generation=state.generation + 1,
            learngenes=next_learngenes,
            parents=parents,
            best_learngene=jax.tree.map(lambda x: x[best], trained),
            best_fitness=fitness[best],
            scores=jnp.nan_to_num(scores, nan=0.0)[parents],
            trained=trained,
            fitness=fitness,
        )
        finite = jnp.isfinite(fitness)
        count = finite.sum()
        mean = jnp.where(finite, fitness, 0.0).sum() / count
        std = jnp.sqrt(jnp.where(finite, (fitness - mean) ** 2, 0.0).sum() / count)
        none = jnp.float32(jnp.nan)
        metrics = {
            "generation": state.generation + 1,
            "fitness_max": jnp.where(
                count > 0, jnp.where(finite, fitness, -jnp.inf).max(), none
            ),
            "fitness_mean": mean,
            "fitness_min": jnp.where(
                count > 0, jnp.where(finite, fitness, jnp.inf).min(), none
            ),
            "fitness_ci": 1.96 * std / jnp.sqrt(count),
            "fitness": fitness,
            "scores": scores,
            "diverged": diverged.sum(),
            "life_loss_first": jnp.nanmean(life_losses[0]),
            "life_loss_last": jnp.nanmean(life_losses[-1]),
            "critic_instinct_mean": instinct.mean(),
            "parents": parents,
            "best_index": best,
            "diversity": diversity(next_learngenes),
        }
        return self.place(new_state), metrics

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

    def state_shardings(self, state: Any) -> Any:
        """Where each leaf of an ``EvolutionState`` (or its ``eval_shape``) belongs: the
        population (``learngenes``, ``parents``, ...) sharded over the mesh when P is divisible
        by the devices, the rest replicated;
        on one device, the default device. Restores place a checkpoint written on any number
        of devices by these."""
        if self.mesh is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.tree.map(lambda _: device, state)
        rep = replicated_sharding(self.mesh)
        # A population not divisible by the devices is replicated (executors pad it).
        divisible = self.config.pop_size % self.mesh.size == 0
        pop = population_sharding(self.mesh) if divisible else rep
        return state.replace(
            generation=rep,
            learngenes=jax.tree.map(lambda _: pop, state.learngenes),
            parents=pop,
            best_learngene=jax.tree.map(lambda _: rep, state.best_learngene),
            best_fitness=rep,
            scores=pop,
            trained=jax.tree.map(lambda _: pop, state.trained),
            fitness=pop,
        )

    def place(self, state: EvolutionState) -> EvolutionState:
        """``state`` with every leaf where ``state_shardings`` puts it (one jit, so that
        with several processes host values become global arrays Orbax can save)."""
        if self.mesh is None:
            return state
        shardings = self.state_shardings(state)
        return jax.jit(lambda s: s, out_shardings=shardings)(state)

    def critic_key(self, root_key: jax.Array) -> jax.Array | None:
        """The key of every generation's critics with ``fixed_critics``; else None (each
        generation draws its own)."""
        if not self.config.fixed_critics:
            return None
        return jax.random.fold_in(root_key, CRITIC_STREAM)
