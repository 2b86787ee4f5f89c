"""Two generations of a tiny evolution on all the process's devices; writes the results.

A helper of tests/test_sharding.py, run in a subprocess because the CPU device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) is fixed when JAX starts. It also
checks that the population state is laid out over the devices as population.py says.

  python tests/scripts/sharded_evolution.py --strategy loop --out result.npz
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from gtl_jax.data import load_omniglot
from gtl_jax.data.pool import sample_batch
from gtl_jax.descendants import Recipe
from gtl_jax.evolution import Evolution, EvolutionConfig
from gtl_jax.executors import HostExecutor, population_map
from gtl_jax.experiment import configure_jax
from gtl_jax.learngene import make_spec
from gtl_jax.models import build_model
from gtl_jax.population import init_network, make_optimizer, train_step
from gtl_jax.sharding import Placement


def check_layout(tree, pop_size: int) -> None:
    """Every leaf split over the 'pop' axis of all devices, ceil(pop_size / D) members on
    each device (a population the devices do not divide is padded, never replicated)."""
    devices = jax.device_count()
    for leaf in jax.tree.leaves(tree):
        if devices == 1:
            assert len(leaf.sharding.device_set) == 1, leaf.sharding
            continue
        assert leaf.sharding.spec == PartitionSpec("pop"), leaf.sharding
        shards = leaf.addressable_shards
        assert len({s.device for s in shards}) == devices, leaf.sharding
        assert all(s.data.shape[0] == -(-pop_size // devices) for s in shards)


def check_map_layout(tree, pop_size: int) -> None:
    """population_map's outputs: split over the devices when they divide pop_size;
    otherwise the P rows it computed padded, gathered on every device."""
    if jax.device_count() > 1 and pop_size % jax.device_count():
        assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(tree))
    else:
        check_layout(tree, pop_size)


def check_random_bits(pop_size: int) -> None:
    """Each member's random draws from its own key are the same whether the members are
    padded and sharded over the devices or vmapped on one: the bits do not depend on the
    sharding (with the commands' threefry setting, ``configure_jax``)."""

    def draw(key):
        return jax.random.normal(key, (7,)), jax.random.bernoulli(key, 0.5, (3,))

    keys = jax.random.split(jax.random.key(5), pop_size)
    sharded = jax.jit(Placement(pop_size).map_members(draw, (0,)))(keys)
    alone = jax.jit(jax.vmap(draw))(jax.device_put(keys, jax.devices()[0]))
    for a, b in zip(sharded, alone):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def lifetime_steps(strategy: str, mesh, members: int) -> dict[str, np.ndarray]:
    """``members`` networks trained two steps by ``population_map``: the losses and the weights.

    No selection, and images of uniform noise: max-pooling routes a gradient to one of tied
    maxima, which Omniglot's flat black and white regions are full of, so there a
    float-level difference moves gradients (measured: 1% of a BatchNorm bias after one step).
    """
    model = build_model("vgg11", 5, width=1 / 16)
    tx = make_optimizer("sgd", 0.05, momentum=0.9)
    images = jax.random.randint(
        jax.random.key(2), (20, 20, 28, 28, 1), 0, 256, jnp.int32
    ).astype(jnp.uint8)

    def step_fn(key, state, classes, images):
        x, y = sample_batch(key, images, classes, batch_size=32)
        return train_step(model, tx, state, x, y)

    init = population_map(
        lambda k: init_network(model, tx, k, images.shape[2:]),
        (0,),
        strategy=strategy,
        mesh=mesh,
    )
    step = population_map(step_fn, (0, 0, 0, None), strategy=strategy, mesh=mesh)
    key = jax.random.key(1)
    state = init(jax.random.split(key, members))
    classes = jnp.tile(jnp.arange(5), (members, 1)) + jnp.arange(members)[:, None]
    losses = []
    for s in range(2):
        state, loss = step(
            jax.random.split(jax.random.fold_in(key, s), members),
            state,
            classes,
            images,
        )
        losses.append(np.asarray(loss))
    if mesh is not None:
        check_map_layout(state, members)
    params = jax.tree_util.tree_leaves_with_path(state.params)
    return {
        "losses": np.stack(losses),
        **{jax.tree_util.keystr(path): np.asarray(v) for path, v in params},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--pop_size", type=int, default=8)
    parser.add_argument("--tournament_size", type=int, default=4)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--life_genes", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--lifetime_only",
        action="store_true",
        help="instead: train pop_size networks by population_map on all devices and on one",
    )
    args = parser.parse_args()
    configure_jax()
    if args.lifetime_only:
        single = lifetime_steps(args.strategy, None, args.pop_size)
        sharded = lifetime_steps(args.strategy, "auto", args.pop_size)
        np.savez(
            args.out,
            devices=jax.device_count(),
            **{f"single/{k}": v for k, v in single.items()},
            **{f"sharded/{k}": v for k, v in sharded.items()},
        )
        return
    pools = load_omniglot()
    config = EvolutionConfig(
        pop_size=args.pop_size,
        tournament_size=args.tournament_size,
        life_way=5,
        life_steps=2,
        num_critics=1,
        life_genes=args.life_genes,
    )
    model = build_model("vgg11", 5, width=1 / 16)
    train, val = (jnp.asarray(pools[s].images[:20]) for s in ("train", "val"))
    evo = Evolution(
        model,
        model,
        make_spec(model, 0.45, 1),
        config,
        Recipe(steps=1, eval_every=1),
        train,
        val,
    )
    executor = HostExecutor(evo, args.strategy)
    key = jax.random.key(0)
    check_random_bits(args.pop_size)
    state = executor.init(key)
    check_layout(state.learngenes, args.pop_size)
    results = {}
    for g in range(args.generations):
        state, metrics = executor.generation(key, state)
        for field in type(state).POPULATION_FIELDS:
            check_layout(getattr(state, field), args.pop_size)
        results[f"fitness/{g}"] = np.asarray(metrics["fitness"])
        results[f"parents/{g}"] = np.asarray(metrics["parents"])
        for name in config.gene_names:
            results[f"life_genes/{g}/{name}"] = np.asarray(
                metrics[f"life_genes/{name}"]
            )
        for name, gene in executor.logical(state).learngenes.items():
            for k, v in gene.items():
                results[f"learngenes/{g}/{name}/{k}"] = np.asarray(v)
    np.savez(args.out, devices=jax.device_count(), **results)


if __name__ == "__main__":
    main()
