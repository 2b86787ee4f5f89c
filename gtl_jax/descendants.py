"""Descendants: fresh networks that inherit a learngene, fine-tuned and scored on episodes.

How every claim is measured, and step 4 of a generation (critics are descendants judged
on meta-validation episodes). One descendant per episode: a fresh network (its own key) with the
learngene written in, a new N-way head (random, zero, or the support prototypes), ``steps``
full-batch optimiser steps on the support set, query accuracy with running BatchNorm statistics.
``scratch`` is the same with no learngene and the same keys (common random numbers).

Everything here is written for one descendant; ``DescendantEvaluator`` runs it for one
descendant per episode: as a population (``population_map``) with vmap, or, with the CPU loop
strategy, one descendant at a time through all its steps (member-major).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from gtl_jax.data.pool import Episode
from gtl_jax.distributed import gather_blocks, local, process_block, rows
from gtl_jax.learngene import Learngene, insert_learngene
from gtl_jax.population import (
    TrainState,
    cross_entropy,
    init_network,
    make_optimizer,
    population_map,
    predict,
    resolve_strategy,
    train_step,
)

HEADS = ("random", "zero", "prototype")
BATCH_NORM = ("batch", "frozen")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a descendant is fine-tuned; every reported number names its recipe.

    The defaults are the default config's (``gtl_jax/configs/omniglot.py``; a test checks):
    ``Recipe()`` is the recipe of the descendants of ``python -m gtl_jax.evolve`` and
    ``python -m gtl_jax.inherit`` run with that config, and
    ``gtl_jax.descendant_recipe(config)`` builds the recipe of any config.

    Attributes:
      head: initial N-way head: "random", "zero", or "prototype" (class means of the support
        features: logits are minus squared distances to them, as in Proto-MAML).
      optimizer: "adam" or "sgd".
      learning_rate: step size.
      steps: S_d, full-batch steps on the support set.
      eval_every: query accuracy is also recorded every this many steps (learning curve).
      batch_norm: "batch": fine-tuning steps normalise with the support batch's statistics
        and update the running ones (Flax ``train=True``); "frozen": they normalise with the
        inherited running statistics and leave them as they are.
    """

    head: str = "random"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    steps: int = 20
    eval_every: int = 10
    batch_norm: str = "frozen"

    def __post_init__(self):
        def need(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{field}={getattr(self, field)!r}: {why}")

        need(self.head in HEADS, "head", f"must be one of {HEADS}")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(int(self.steps) >= 0, "steps", "must be >= 0")
        need(int(self.eval_every) >= 1, "eval_every", "must be >= 1")
        need(
            self.batch_norm in BATCH_NORM, "batch_norm", f"must be one of {BATCH_NORM}"
        )

    @property
    def curve_steps(self) -> tuple[int, ...]:
        """Steps at which query accuracy is recorded: 0, eval_every, ..., steps."""
        return tuple(sorted({*range(0, self.steps, self.eval_every), self.steps}))

    def describe(self) -> str:
        bn = "" if self.batch_norm == "batch" else ", frozen BN statistics"
        return (
            f"{self.head} head, {self.optimizer} {self.learning_rate:g}, "
            f"{self.steps} steps{bn}"
        )


def _member(tree: Any, i: jax.Array) -> Any:
    """Member ``i`` (traced) of a stacked pytree."""
    return jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree
    )


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def class_means(features: jax.Array, labels: jax.Array, n_way: int) -> jax.Array:
    """Prototypes f32[N, D]: the mean feature of each class of ``features: f32[B, D]``."""
    one_hot = jax.nn.one_hot(labels, n_way, dtype=features.dtype)
    return (one_hot.T @ features) / jnp.maximum(one_hot.sum(0), 1.0)[:, None]


def prototype_logits(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Minus squared Euclidean distances f32[B, N] of features to prototypes."""
    return -(
        jnp.sum(features**2, -1, keepdims=True)
        - 2 * features @ prototypes.T
        + jnp.sum(prototypes**2, -1)
    )


def new_descendant(
    model: nn.Module,
    key: jax.Array,
    episode: Episode,
    learngene: Learngene | None,
    recipe: Recipe,
    *,
    n_way: int,
    zero_cross: bool = True,
) -> TrainState:
    """A fresh network with the learngene written in and the recipe's head, ready to fine-tune."""
    tx = make_optimizer(recipe.optimizer, recipe.learning_rate)
    state = init_network(model, tx, key, episode.support_x.shape[1:])
    params, batch_stats = state.params, state.batch_stats
    if learngene is not None:
        params, batch_stats = insert_learngene(
            learngene, params, batch_stats, zero_cross=zero_cross
        )
    if recipe.head == "zero":
        params = {**params, "head": jax.tree.map(jnp.zeros_like, params["head"])}
    elif recipe.head == "prototype":
        features = predict(
            model, params, batch_stats, episode.support_x, return_features=True
        )
        prototypes = class_means(features, episode.support_y, n_way)
        # -|f - p|^2 = 2 f.p - |p|^2 - |f|^2; the last term is the same for every class.
        params = {
            **params,
            "head": {"kernel": 2.0 * prototypes.T, "bias": -jnp.sum(prototypes**2, -1)},
        }
    return TrainState(params, batch_stats, tx.init(params))


def frozen_bn_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[TrainState, jax.Array]:
    """``train_step`` with BatchNorm on its running statistics, which stay unchanged."""

    def loss_fn(params):
        return cross_entropy(predict(model, params, state.batch_stats, x), y)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, state.batch_stats, opt_state), loss


def instinct_accuracy(
    model: nn.Module, state: TrainState, episode: Episode, *, n_way: int
) -> jax.Array:
    """Query accuracy before any gradient step, nearest support prototype on the features."""
    support = predict(
        model, state.params, state.batch_stats, episode.support_x, return_features=True
    )
    query = predict(
        model, state.params, state.batch_stats, episode.query_x, return_features=True
    )
    logits = prototype_logits(query, class_means(support, episode.support_y, n_way))
    return accuracy(logits, episode.query_y)


def query_accuracy(model: nn.Module, state: TrainState, episode: Episode) -> jax.Array:
    logits = predict(model, state.params, state.batch_stats, episode.query_x)
    return accuracy(logits, episode.query_y)


@struct.dataclass
class DescendantResult:
    """Per-episode results.

    Attributes:
      instinct: f32[E], step-0 nearest-prototype query accuracy.
      curve: f32[E, T], query accuracy with the head at ``recipe.curve_steps``.
      final: f32[E], query accuracy after ``recipe.steps`` steps.
      losses: f32[S, E], the support loss at each step.
    """

    instinct: jax.Array
    curve: jax.Array
    final: jax.Array
    losses: jax.Array


def fine_tune(
    model: nn.Module,
    recipe: Recipe,
    key: jax.Array,
    episode: Episode,
    learngene: Learngene | None,
    *,
    n_way: int,
    zero_cross: bool = True,
    curve: bool = True,
) -> DescendantResult:
    """One descendant, pure: inherit, fine-tune on the support set, score the queries.

    A fresh network (``key``) with ``learngene`` written in (None: scratch) and the recipe's
    head is fine-tuned for ``recipe.steps`` full-batch steps (``lax.scan``); the query
    accuracy is recorded at ``recipe.curve_steps``. Jittable and vmappable: ``jax.vmap`` over
    keys and episodes (and learngenes) gives one descendant per episode in one program.

    Args:
      curve: record the learning curve; False: only the final accuracy (``curve`` holds it
        alone), as critics need.

    Returns:
      A ``DescendantResult`` of one descendant: instinct f32[], curve f32[T], final f32[],
      losses f32[S].
    """
    tx = make_optimizer(recipe.optimizer, recipe.learning_rate)
    state = new_descendant(
        model, key, episode, learngene, recipe, n_way=n_way, zero_cross=zero_cross
    )
    instinct = instinct_accuracy(model, state, episode, n_way=n_way)
    step = frozen_bn_step if recipe.batch_norm == "frozen" else train_step

    def body(state, _):
        return step(model, tx, state, episode.support_x, episode.support_y)

    points = recipe.curve_steps if curve else (recipe.steps,)
    accuracies, losses, done = [], [], 0
    for point in points:
        if point > done:
            state, segment = jax.lax.scan(body, state, None, length=point - done)
            losses.append(segment)
            done = point
        if point == 0 and recipe.head == "prototype" and recipe.steps > 0:
            # The prototype head is the nearest-prototype readout: its step-0 accuracy is
            # the instinct.
            accuracies.append(instinct)
        else:
            accuracies.append(query_accuracy(model, state, episode))
    accuracies = jnp.stack(accuracies)
    losses = jnp.concatenate(losses) if losses else jnp.zeros((0,), jnp.float32)
    return DescendantResult(instinct, accuracies, accuracies[-1], losses)


class DescendantEvaluator:
    """Compiled population functions of one (model, recipe, n_way) for many evaluations.

    Build once and reuse: each function compiles on its first call and serves every later one
    (every generation's critics, every method of the evaluation).
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        *,
        n_way: int,
        strategy: str = "auto",
        zero_cross: bool = True,
        shared_learngene: bool = True,
    ):
        self.model, self.recipe, self.n_way = model, recipe, n_way
        tx = make_optimizer(recipe.optimizer, recipe.learning_rate)
        gene_axis = None if shared_learngene else 0

        def init_fn(key, episode, learngene):
            return new_descendant(
                model,
                key,
                episode,
                learngene,
                recipe,
                n_way=n_way,
                zero_cross=zero_cross,
            )

        step = frozen_bn_step if recipe.batch_norm == "frozen" else train_step

        def step_fn(state, episode):
            return step(model, tx, state, episode.support_x, episode.support_y)

        self.strategy = resolve_strategy(strategy)
        self.shared_learngene = shared_learngene
        if self.strategy == "loop":
            # member_init, member_instinct, member_step, member_accuracy: compiled
            # functions of descendant i (i traced), used by the loop strategy.
            # Member-major: one descendant at a time through its whole fine-tuning, so no
            # stacked state is sliced and re-stacked at every step (with 600 episodes the
            # population-major loop had not finished its first step after 4 minutes). The
            # member index is traced: one compilation serves every descendant.
            def gene_of(learngene, i):
                return learngene if shared_learngene else _member(learngene, i)

            self.member_init = jax.jit(
                lambda i, keys, episodes, learngene: init_fn(
                    keys[i], _member(episodes, i), gene_of(learngene, i)
                )
            )
            self.member_instinct = jax.jit(
                lambda state, i, episodes: instinct_accuracy(
                    model, state, _member(episodes, i), n_way=n_way
                )
            )
            self.member_step = jax.jit(
                lambda state, i, episodes: step_fn(state, _member(episodes, i)),
                donate_argnums=0,
            )
            self.member_accuracy = jax.jit(
                lambda state, i, episodes: query_accuracy(
                    model, state, _member(episodes, i)
                )
            )
        # All descendants at once; the loop strategy uses only init and instinct, which
        # inherit's frozen-prototype baseline calls.
        self.init = population_map(init_fn, (0, 0, gene_axis), strategy=strategy)
        self.instinct = population_map(
            lambda s, e: instinct_accuracy(model, s, e, n_way=n_way),
            (0, 0),
            strategy=strategy,
        )
        if self.strategy != "loop":
            self.init_scratch = population_map(
                lambda key, episode: init_fn(key, episode, None),
                (0, 0),
                strategy=strategy,
            )
            self.step = population_map(step_fn, (0, 0), strategy=strategy)
            self.accuracy = population_map(
                lambda s, e: query_accuracy(model, s, e), (0, 0), strategy=strategy
            )

    def __call__(
        self,
        keys: jax.Array,
        episodes: Episode,
        learngene: Learngene | None,
        *,
        on_step: Callable[[float], Any] | None = None,
        instinct: jax.Array | None = None,
    ) -> DescendantResult:
        """Fine-tunes and scores one descendant per episode.

        Args:
          keys: key[E], one per descendant (the same keys for every method: common random numbers).
          episodes: an Episode whose arrays have a leading E.
          learngene: one learngene shared by all descendants, a stacked one with a leading E
            (if built with ``shared_learngene=False``), or None for scratch.
          on_step: called with the number of population steps just completed (1.0 after
            each step of all descendants; ``steps / E`` after each descendant when they run
            one at a time), e.g. ``tqdm.update``.
          instinct: the instinct of these descendants if already known (it does not depend
            on the head, so an evaluation of the same keys, episodes and learngene with another
            head gives it); computed if None.
        """
        if self.strategy == "loop":
            return self._member_major(keys, episodes, learngene, on_step, instinct)
        if learngene is None:
            state = self.init_scratch(keys, episodes)
        else:
            state = self.init(keys, episodes, learngene)
        if instinct is None:
            instinct = self.instinct(state, episodes)
        curve_steps = set(self.recipe.curve_steps)
        curve, losses = [], []
        for step in range(self.recipe.steps):
            if step == 0 and self.recipe.head == "prototype":
                # A prototype head is the nearest-prototype readout: its step-0 accuracy is
                # the instinct (the same ranking of classes), so it is not computed twice.
                curve.append(instinct)
            elif step in curve_steps:
                curve.append(self.accuracy(state, episodes))
            state, loss = self.step(state, episodes)
            losses.append(loss)
            if on_step is not None:
                on_step(1.0)
        curve.append(self.accuracy(state, episodes))  # the last curve step is `steps`
        curve = jnp.stack(curve, axis=1)
        losses = jnp.stack(losses) if losses else jnp.zeros((0, keys.shape[0]))
        return DescendantResult(instinct, curve, curve[:, -1], losses)

    def _member_major(self, keys, episodes, learngene, on_step, instinct):
        """The loop strategy: each descendant through all its steps, then the next.

        With several processes each runs its own block of descendants (``process_block``) on
        its own device, and the scalars are gathered at the end.
        """
        size = keys.shape[0]
        lo, hi = process_block(size)
        keys, episodes = (
            rows(keys, lo, hi),
            jax.tree.map(lambda x: rows(x, lo, hi), episodes),
        )
        if self.shared_learngene:
            learngene = jax.tree.map(local, learngene)
        else:
            learngene = jax.tree.map(lambda x: rows(x, lo, hi), learngene)
        if instinct is not None:
            instinct = rows(instinct, lo, hi)
        curve_steps = set(self.recipe.curve_steps)
        instincts, curves, losses = [], [], []
        for i in range(hi - lo):
            index = jnp.int32(i)
            state = self.member_init(index, keys, episodes, learngene)
            if instinct is None:
                member_instinct = self.member_instinct(state, index, episodes)
            else:
                member_instinct = instinct[i]
            curve, member_losses = [], []
            for step in range(self.recipe.steps):
                if step == 0 and self.recipe.head == "prototype":
                    curve.append(member_instinct)  # as in __call__
                elif step in curve_steps:
                    curve.append(self.member_accuracy(state, index, episodes))
                state, loss = self.member_step(state, index, episodes)
                member_losses.append(loss)
            curve.append(self.member_accuracy(state, index, episodes))
            instincts.append(member_instinct)
            curves.append(curve)
            losses.append(member_losses)
            if on_step is not None:
                on_step(self.recipe.steps / (hi - lo))
        # One transfer of all the scalars at the end (no host sync per descendant).
        instincts, curves, losses = jax.device_get((instincts, curves, losses))
        n, width, steps = hi - lo, len(self.recipe.curve_steps), self.recipe.steps
        instinct = gather_blocks(np.asarray(instincts, np.float32).reshape(n), size)
        curve = gather_blocks(np.asarray(curves, np.float32).reshape(n, width), size)
        losses = gather_blocks(np.asarray(losses, np.float32).reshape(n, steps), size)
        curve = jnp.asarray(curve)
        return DescendantResult(
            jnp.asarray(instinct), curve, curve[:, -1], jnp.asarray(losses.T)
        )


def mean_confidence(values: Sequence[float] | jax.Array) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(T)`` (population std, ddof=0)."""
    values = jnp.asarray(values, jnp.float32)
    return float(values.mean()), float(1.96 * values.std() / jnp.sqrt(values.size))
