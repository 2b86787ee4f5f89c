"""Descendants: fresh networks that inherit a learngene, fine-tuned and scored on episodes.

How every claim is measured, and step 4 of a generation (critics are descendants judged
on meta-validation episodes). One descendant per episode: a fresh network (its own key) with the
learngene written in, a new N-way head (random, zero, or the support prototypes), ``steps``
full-batch optimiser steps on the support set, query accuracy with running BatchNorm statistics.
``scratch`` is the same with no learngene and the same keys (common random numbers).

Everything here is written for one descendant and is pure: ``fine_tune`` is a whole
descendant, ``jax.vmap``-ped over episodes by the pure generation. Running many descendants
on a machine (vmapped, or one at a time on CPU, or split between processes) is an executor's
job: ``gtl_jax.executors.DescendantEvaluator``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from gtl_jax.data.pool import Episode
from gtl_jax.learngene import Learngene, insert_learngene
from gtl_jax.population import (
    OPTIMIZERS,
    TrainState,
    cross_entropy,
    init_network,
    make_optimizer,
    predict,
    train_step,
)

HEADS = ("random", "zero", "prototype")
BATCH_NORM = ("batch", "frozen")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a descendant is fine-tuned; every reported number names its recipe.

    The defaults are the default config's (``configs/omniglot.py`` builds its
    ``descendants`` section from them): ``Recipe()`` is the recipe of the descendants of
    ``python -m gtl_jax.evolve`` and ``python -m gtl_jax.inherit`` run with that config,
    and ``gtl_jax.descendant_recipe(config)`` builds the recipe of any config.

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

    head: str = dataclasses.field(
        default="random",
        metadata={"help": "descendant head init: random, zero or prototype"},
    )
    optimizer: str = dataclasses.field(
        default="adam",
        metadata={"help": "descendant (and critic) optimizer: adam or sgd"},
    )
    learning_rate: float = dataclasses.field(
        default=1e-3, metadata={"help": "descendant (and critic) learning rate"}
    )
    steps: int = dataclasses.field(
        default=20, metadata={"help": "descendant fine-tuning steps S_d"}
    )
    eval_every: int = dataclasses.field(
        default=10, metadata={"help": "learning-curve resolution in steps"}
    )
    batch_norm: str = dataclasses.field(
        default="frozen",
        metadata={
            "help": "descendant BatchNorm while fine-tuning: batch (support statistics, "
            "running ones updated) or frozen (inherited running statistics)"
        },
    )

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

    def describe(self, *, batch_norm_model: bool = True) -> str:
        """One line for a results table; ``batch_norm_model=False`` (a ViT, which has
        no BatchNorm) leaves out the BatchNorm mode, which does not apply to it."""
        frozen = batch_norm_model and self.batch_norm != "batch"
        bn = ", frozen BN statistics" if frozen else ""
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


def _start(
    model: nn.Module,
    recipe: Recipe,
    key: jax.Array,
    episode: Episode,
    learngene: Learngene | None,
    *,
    n_way: int,
    zero_cross: bool,
) -> tuple[TrainState, Callable]:
    """A new descendant and its fine-tuning step on the support set (a ``lax.scan`` body)."""
    tx = make_optimizer(recipe.optimizer, recipe.learning_rate)
    state = new_descendant(
        model, key, episode, learngene, recipe, n_way=n_way, zero_cross=zero_cross
    )
    step = frozen_bn_step if recipe.batch_norm == "frozen" else train_step

    def body(state, _):
        return step(model, tx, state, episode.support_x, episode.support_y)

    return state, body


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
    state, body = _start(
        model, recipe, key, episode, learngene, n_way=n_way, zero_cross=zero_cross
    )
    instinct = instinct_accuracy(model, state, episode, n_way=n_way)
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


def fine_tuned(
    model: nn.Module,
    recipe: Recipe,
    key: jax.Array,
    episode: Episode,
    learngene: Learngene | None,
    *,
    n_way: int,
    zero_cross: bool = True,
) -> TrainState:
    """The network ``fine_tune`` scores: the descendant after its ``recipe.steps`` steps
    (the same key, episode and learngene give the same network). Pure, vmappable."""
    state, body = _start(
        model, recipe, key, episode, learngene, n_way=n_way, zero_cross=zero_cross
    )
    state, _ = jax.lax.scan(body, state, None, length=recipe.steps)
    return state


def mean_confidence(values: Sequence[float] | jax.Array) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(T)`` (population std, ddof=0)."""
    values = jnp.asarray(values, jnp.float32)
    return float(values.mean()), float(1.96 * values.std() / jnp.sqrt(values.size))
