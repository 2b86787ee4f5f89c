"""Conventional pre-training: the baselines' source network.

The same architecture as the descendants, trained supervised on every meta-train class at once
(one head over all of them). The evidence suite cuts its baselines from it: the whole conv stack
(pretrain-full), the learngene's channel circuit (pretrain-circuit) and the last conv layers
(Heur-LG).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from gtl_jax.data.pool import sample_batch
from gtl_jax.learngene import LearngeneSpec, close_circuit
from gtl_jax.population import TrainState, init_network, make_optimizer, train_step


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """How the source network is pre-trained.

    Attributes:
      pretrain_steps: optimiser steps.
      pretrain_batch: images per step, drawn uniformly over all meta-train images.
      pretrain_lr: Adam learning rate.
      pretrain_weight_decay: L2 weight decay added to the gradient.
    """

    pretrain_steps: int = dataclasses.field(
        default=2000,
        metadata={"help": "inherit: Adam steps of the pretrained baseline network"},
    )
    pretrain_batch: int = dataclasses.field(
        default=64,
        metadata={
            "help": "inherit: batch size of pre-training (all meta-train classes)"
        },
    )
    pretrain_lr: float = dataclasses.field(
        default=1e-3, metadata={"help": "inherit: Adam learning rate of pre-training"}
    )
    pretrain_weight_decay: float = dataclasses.field(
        default=0.0, metadata={"help": "inherit: L2 weight decay of pre-training"}
    )


def pretrain(
    model: nn.Module,
    key: jax.Array,
    images: jax.Array,
    config: PretrainConfig,
    *,
    on_step: Callable[[int, jax.Array], Any] | None = None,
    augment_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    closed_spec: LearngeneSpec | None = None,
) -> tuple[TrainState, jax.Array]:
    """Trains one network on all classes of ``images: u8[C, M, H, W, Ch]``.

    Args:
      model: a network whose head has ``C`` classes.
      key: init and batch-sampling key.
      images: the meta-train pool; class ``c`` gets label ``c``.
      config: steps, batch, learning rate.
      on_step: called with ``(step, loss)`` after each step (progress bar).
      augment_fn: training augmentation (``gtl_jax.data.augment_fn``), or None.
      closed_spec: if given, the weights from non-gene inputs into this spec's gene outputs
        are kept at zero (as lifetime learning does with ``life_closed``), so the circuit cut
        from the network is the closed sub-network it trained as.

    Returns:
      ``(state, losses: f32[steps])``.
    """
    num_classes = images.shape[0]
    if model.num_classes != num_classes:
        raise ValueError(
            f"the model's head has {model.num_classes} classes, the pool {num_classes}"
        )
    tx = make_optimizer(
        "adam", config.pretrain_lr, weight_decay=config.pretrain_weight_decay
    )
    init_key, data_key = jax.random.split(key)
    state = init_network(model, tx, init_key, tuple(images.shape[2:]))

    # The pool is an argument, not a closed-over constant, and the state is donated.
    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, step_key, images):
        augment_key = None
        if augment_fn is not None:  # without augmentation no extra key is drawn
            step_key, augment_key = jax.random.split(step_key)
        classes = jnp.arange(
            images.shape[0], dtype=jnp.int32
        )  # an iota, not a constant
        x, y = sample_batch(step_key, images, classes, batch_size=config.pretrain_batch)
        state, loss = train_step(
            model, tx, state, x, y, key=augment_key, augment_fn=augment_fn
        )
        if closed_spec is not None:
            state = state.replace(params=close_circuit(closed_spec, state.params))
        return state, loss

    losses = []
    for i in range(config.pretrain_steps):
        state, loss = step(state, jax.random.fold_in(data_key, i), images)
        losses.append(loss)
        if on_step is not None:
            on_step(i, loss)
    return state, jnp.stack(losses) if losses else jnp.zeros((0,))
