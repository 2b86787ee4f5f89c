"""The population operators of GTL: selection, mutation, reproduction, the life genes'
inheritance, and the population statistics a generation reports (fitness, and the
selection differential and response of the breeder's equation).

Each is a pure, jittable function of one key and arrays (keys first), written for a stacked
population (leading axis P) or, for ``mutate``, for one learngene and vmapped at the call
site. Fitness is higher-is-better; NaN or infinite fitness is never selected over a number.
``gtl_jax.evolution`` composes them into a generation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax.learngene import Learngene, parameter_keys


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


def fitness_statistics(fitness: jax.Array) -> dict[str, jax.Array]:
    """Max, mean, min and 95% half-width (1.96 std / sqrt(n), population std) of the finite
    values of ``fitness: f32[P]``; NaN where none is finite."""
    finite = jnp.isfinite(fitness)
    count = finite.sum()
    mean = jnp.where(finite, fitness, 0.0).sum() / count
    std = jnp.sqrt(jnp.where(finite, (fitness - mean) ** 2, 0.0).sum() / count)
    none = jnp.float32(jnp.nan)
    return {
        "fitness_max": jnp.where(
            count > 0, jnp.where(finite, fitness, -jnp.inf).max(), none
        ),
        "fitness_mean": mean,
        "fitness_min": jnp.where(
            count > 0, jnp.where(finite, fitness, jnp.inf).min(), none
        ),
        "fitness_ci": 1.96 * std / jnp.sqrt(count),
    }


def selection_statistics(
    fitness: jax.Array, parents: jax.Array, previous: jax.Array
) -> dict[str, jax.Array]:
    """The two quantities of the breeder's equation (response = heritability x
    differential) for one generation.

    Args:
      fitness: f32[P], this generation's fitness (NaN: diverged).
      parents: i32[P], the member of this generation each child of the next descends from.
      previous: f32[P], the previous generation's fitness (all NaN before the first).

    Returns:
      ``selection_differential``: the mean fitness of the parents (counted once per
      child) minus the population's mean; 0 in expectation without selection.
      ``response``: this generation's mean fitness minus the previous one's (NaN in the
      first generation). With Lamarckian inheritance fitness rises without selection too:
      selection's own part is the response minus a no-selection control's.
    """
    mean = fitness_statistics(fitness)["fitness_mean"]
    return {
        "selection_differential": fitness_statistics(fitness[parents])["fitness_mean"]
        - mean,
        "response": mean - fitness_statistics(previous)["fitness_mean"],
    }


# --------------------------------------------------------------------------- life genes


def _scale(name: str, values: jax.Array) -> jax.Array:
    """The positive quantity a life gene evolves multiplicatively: the value itself, or for
    momentum the fraction of the last update dropped, ``1 - momentum`` (so that momentum
    stays below 1 however it mutates)."""
    return 1.0 - values if name == "momentum" else values


def _unscale(name: str, scale: jax.Array) -> jax.Array:
    return 1.0 - jnp.minimum(scale, 1.0) if name == "momentum" else scale


def init_life_genes(
    key: jax.Array, values: dict[str, float], size: int, *, spread: float
) -> dict[str, jax.Array]:
    """Generation 0's life genes ``{name: f32[P]}``: each gene's scale (its value; for
    momentum ``1 - momentum``) drawn log-uniformly within ``[s / spread, s * spread]`` of
    its value's (``spread = 1``: all equal to the value)."""
    keys = jax.random.split(key, max(len(values), 1))
    genes = {}
    for k, (name, value) in zip(keys, sorted(values.items())):
        log = jax.random.uniform(k, (size,), minval=-1.0, maxval=1.0) * jnp.log(spread)
        scale = _scale(name, jnp.float32(value)) * jnp.exp(log)
        genes[name] = _unscale(name, scale)
    return genes


def inherit_life_genes(
    key: jax.Array, genes: dict[str, jax.Array], parents: jax.Array, *, sigma: float
) -> dict[str, jax.Array]:
    """The next generation's life genes: child i takes parent ``parents[i]``'s, its scale
    (the value; for momentum ``1 - momentum``) times ``exp(sigma * N(0, 1))`` (PBT's explore
    step, log-normal), except slot 0 (the elite, or the control's unmutated copy), which
    keeps its parent's as ``reproduce`` keeps its learngene. ``sigma = 0`` is plain
    inheritance. Pure."""
    out = {}
    for k, name in zip(jax.random.split(key, max(len(genes), 1)), sorted(genes)):
        children = genes[name][parents]
        noise = sigma * jax.random.normal(k, children.shape, children.dtype)
        noise = noise.at[0].set(0.0)
        out[name] = jnp.where(
            noise == 0.0,
            children,
            _unscale(name, _scale(name, children) * jnp.exp(noise)),
        )
    return out
