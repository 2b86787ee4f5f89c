"""Populations of networks: stacked state, init, the train step and how it executes (DESIGN 4).

This module alone adds the population axis P (STYLE 5). Per-network functions (``init_network``,
``train_step``) are written for one individual; ``population_map`` applies one to every member.
Its semantics is always ``jax.vmap``; how it runs is an execution strategy:

- ``"vmap"``: ``jax.vmap``. Expected best on GPU/TPU, where batched convs are fast.
- ``"loop"``: one compiled function of one member, called for each member index from a host
  loop, outputs stacked. On XLA CPU vmap turns every conv into a grouped conv, which runs slower
  than P separate convs (`../shared/MEASURED.md`). benchmarks/population_step.py, P=8 VGG11 x1/8,
  batch 32 (benchmarks/results/): loop 2373 images/s, vmap 1117; members unrolled inside one jit
  2259, but its first call took 20.9 s against 7.4 s, as its compile time grows with P. So the
  loop is the CPU form.
- ``"auto"``: ``"vmap"`` on GPU/TPU, ``"loop"`` on CPU.

benchmarks/population_step.py and benchmarks/descendant_step.py measure the strategies.
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

STRATEGIES = ("auto", "vmap", "loop")


@struct.dataclass
class TrainState:
    """The state of one network (or, stacked, of a population: every leaf has a leading P)."""

    params: Any
    batch_stats: Any
    opt_state: Any


def resolve_strategy(strategy: str, backend: str | None = None) -> str:
    """Maps ``"auto"`` to the measured best strategy of the backend."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    return "loop" if backend == "cpu" else "vmap"


def _take(tree: Any, i: jax.Array) -> Any:
    return jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree
    )


def population_map(
    fn: Callable, in_axes: Sequence[int | None], *, strategy: str = "auto"
) -> Callable:
    """A compiled function computing ``jax.vmap(fn, in_axes)(*args)`` by an execution strategy.

    Args:
      fn: a pure function of one individual whose outputs are pytrees of arrays.
      in_axes: for each positional argument, 0 (mapped over its leading axis P) or None (shared
        by all members).
      strategy: ``"vmap"``, ``"loop"`` or ``"auto"`` (see the module docstring).

    Returns:
      A function of the same arguments with outputs stacked along a leading P. It is already
      compiled: call it from host code (with ``"loop"`` it is a host loop, not traceable).
    """
    in_axes = tuple(in_axes)
    strategy = resolve_strategy(strategy)
    if strategy == "vmap":
        return jax.jit(jax.vmap(fn, in_axes=in_axes))

    @jax.jit
    def member(i, *args):
        return fn(*(_take(a, i) if axis == 0 else a for a, axis in zip(args, in_axes)))

    def looped(*args):
        size = population_size([a for a, axis in zip(args, in_axes) if axis == 0])
        # The member index is traced (an array), so one compilation serves every member.
        return _stack_jit([member(jnp.int32(i), *args) for i in range(size)])

    looped.member = member  # exposed for compile-count tests
    return looped


def init_network(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialises one network and its optimiser state."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(params, variables["batch_stats"], tx.init(params))


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
        return cross_entropy(logits, y), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, batch_stats, opt_state), loss


def predict(
    model: nn.Module, params: Any, batch_stats: Any, x: jax.Array, **kwargs
) -> jax.Array:
    """Inference with running BatchNorm statistics: logits (or features) of ``x: u8[B, H, W, Ch]``."""
    return model.apply(
        {"params": params, "batch_stats": batch_stats},
        to_float(x),
        train=False,
        **kwargs,
    )


def make_optimizer(
    name: str, learning_rate: float, *, momentum: float = 0.9, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """``"sgd"`` (with momentum) or ``"adam"``; weight decay is added to the gradient (L2)."""
    if name == "sgd":
        base = optax.sgd(learning_rate, momentum=momentum)
    elif name == "adam":
        base = optax.adam(learning_rate)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    return optax.chain(optax.add_decayed_weights(weight_decay), base)


def stack(trees: Sequence[Any]) -> Any:
    """Stacks P pytrees of one structure into one pytree with a leading P axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


_stack_jit = jax.jit(stack)


def population_size(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]
