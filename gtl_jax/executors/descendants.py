"""``DescendantEvaluator``: one descendant per episode, run by an execution strategy.

Each descendant is the core's pure ``gtl_jax.descendants.fine_tune``. With the vmap strategy
(GPU/TPU) all of them are one jitted, vmapped program. With the CPU loop strategy they run
member-major: one descendant at a time through all its steps, one compiled function per phase
(init, instinct, step, accuracy) serving every descendant. With several processes each runs
its own block of descendants and the scalars are gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from gtl_jax.data.pool import Episode
from gtl_jax.descendants import (
    DescendantResult,
    Recipe,
    fine_tune,
    frozen_bn_step,
    instinct_accuracy,
    new_descendant,
    query_accuracy,
)
from gtl_jax.distributed import gather_blocks, local, process_block, rows
from gtl_jax.executors.population_map import population_map, resolve_strategy
from gtl_jax.learngene import Learngene
from gtl_jax.population import make_optimizer, train_step


def _member(tree: Any, i: jax.Array) -> Any:
    """Member ``i`` (traced) of a stacked pytree."""
    return jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree
    )


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
            # All descendants through all their steps in one program (the pure
            # ``fine_tune``, vmapped): nothing returns to the host between steps.
            def whole(key, episode, learngene):
                return fine_tune(
                    model,
                    recipe,
                    key,
                    episode,
                    learngene,
                    n_way=n_way,
                    zero_cross=zero_cross,
                )

            self.fine_tune = population_map(whole, (0, 0, gene_axis), strategy=strategy)
            self.fine_tune_scratch = population_map(
                lambda key, episode: whole(key, episode, None),
                (0, 0),
                strategy=strategy,
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
            result = self.fine_tune_scratch(keys, episodes)
        else:
            result = self.fine_tune(keys, episodes, learngene)
        if on_step is not None:
            on_step(float(self.recipe.steps))
        if instinct is not None:
            result = result.replace(instinct=instinct)
        # Per-descendant results: losses step-major, f32[S, E].
        return result.replace(losses=result.losses.T)

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
