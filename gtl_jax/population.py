"""Populations of networks: stacked state, init, the train step, the optimisers.

Per-network functions (``init_network``, ``train_step``) are written for one individual; a
population is the same pytree with a leading axis P, computed by ``jax.vmap`` (the pure
generation, ``gtl_jax.evolution.Evolution.step``) or by an executor that runs one member at a
time (``gtl_jax.executors.population_map``, the CPU form).
Where a population lives on devices is ``gtl_jax.sharding``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from gtl_jax.data.pool import to_float


@struct.dataclass
class TrainState:
    """The state of one network (or, stacked, of a population: every leaf has a leading P)."""

    params: Any
    batch_stats: Any
    opt_state: Any


def init_network(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialises one network and its optimiser state."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    # A network without BatchNorm (a ViT) has no statistics: an empty collection.
    return TrainState(params, variables.get("batch_stats", {}), tx.init(params))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, jax.Array]:
    """One optimiser step of one network on ``x: u8[B, H, W, Ch]``, ``y: i32[B]``.

    With ``augment_fn`` (e.g. ``gtl_jax.data.augment_fn("crop_flip", S)``) the batch is first
    augmented on the device with ``key``; without it no key is used.

    Returns the new state and the loss (f32[]) before the step.

    Raises:
      TypeError: ``x`` is not uint8 (``gtl_jax.data.to_float``: images are uint8 in
        [0, 255], divided by 255; float images are refused, not guessed at).
    """
    if augment_fn is not None:
        if key is None:
            raise ValueError("train_step: augment_fn needs a key")
        x = augment_fn(key, x)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            to_float(x),
            train=True,
            mutable=["batch_stats"],
        )
        return cross_entropy(logits, y), updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, batch_stats, opt_state), loss


def predict(
    model: nn.Module, params: Any, batch_stats: Any, x: jax.Array, **kwargs
) -> jax.Array:
    """Inference with running BatchNorm statistics: logits (or features) of ``x: u8[B, H, W, Ch]``.

    Raises ``TypeError`` if ``x`` is not uint8 (as ``train_step``)."""
    return model.apply(
        {"params": params, "batch_stats": batch_stats},
        to_float(x),
        train=False,
        **kwargs,
    )


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(
    name: str, learning_rate: float, *, momentum: float = 0.9, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """``"sgd"`` (with momentum) or ``"adam"``; weight decay is added to the gradient (L2)."""
    if name == "sgd":
        base = optax.sgd(learning_rate, momentum=momentum)
    elif name == "adam":
        base = optax.adam(learning_rate)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return optax.chain(optax.add_decayed_weights(weight_decay), base)


def stack(trees: Sequence[Any]) -> Any:
    """Stacks P pytrees of one structure into one pytree with a leading P axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def population_size(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]
