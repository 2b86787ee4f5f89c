"""Where a population lives: the device mesh, the population's sharding and its padding.

The core (``gtl_jax.evolution``) computes with a population of P members and never asks how
many devices exist. This runtime module places it: with D devices (of one or several
processes) the population axis is split over a 1-D mesh with axis ``"pop"``, and P is
padded to ``ceil(P / D) * D`` so that every device holds ``ceil(P / D)`` members; a
population is never replicated. Padded members are copies of the last member; they are
computed with the others (each device runs ceil(P / D) members, the rounds an unpadded
shard would take) and dropped before selection, so they are never selected, logged or
written out. What every member reads (the image pools) is replicated.

``Placement`` does all of it for one population size: ``place`` (a logical state into its
padded, sharded form), ``logical`` (back, for checkpoints and learngene files),
``map_members`` (a per-member function over the padded, sharded members, inside a jit) and
``jit_generation`` (the core's ``evaluate`` and ``tell`` as one jitted, sharded step).

Random bits do not depend on the sharding (``jax_threefry_partitionable``, set by the
commands, as big_vision does): with padding done in the jitted step, the members' keys are
those of one device, so a run resumed on another device count continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

POP_AXIS = "pop"


def population_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """The 1-D ``"pop"`` mesh over ``devices`` (default: all devices); None for one device."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) < 2:
        return None
    return Mesh(np.asarray(devices), (POP_AXIS,))


def population_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis P split over the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(POP_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(x: Any, mesh: Mesh | None) -> Any:
    """``x`` (host or device arrays, equal on every process) on every device of ``mesh``.

    Multi-process safe: each process fills only its own devices, from its own copy.
    """
    if mesh is None:
        return x
    sharding = replicated_sharding(mesh)

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, x)


def pad_rows(tree: Any, size: int) -> Any:
    """Every leaf's leading axis grown to ``size`` with copies of its last row. Traceable."""

    def grow(x):
        extra = size - x.shape[0]
        if extra == 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(grow, tree)


def first_rows(tree: Any, size: int) -> Any:
    """Every leaf's first ``size`` rows. Traceable."""
    return jax.tree.map(lambda x: x if x.shape[0] == size else x[:size], tree)


class Placement:
    """The placement of a population of ``size`` members on ``mesh``.

    Args:
      size: P, the population size.
      mesh: the ``"pop"`` mesh; ``"auto"``: ``population_mesh()`` (None on one device: no
        padding, everything on the default device).

    Attributes:
      padded: P rounded up to a multiple of the devices.
    """

    def __init__(self, size: int, mesh: Mesh | None | str = "auto"):
        self.mesh = population_mesh() if mesh == "auto" else mesh
        self.size = int(size)
        devices = 1 if self.mesh is None else self.mesh.size
        self.padded = -(-self.size // devices) * devices

    # ----------------------------------------------------------------- shardings

    def _shardings(self, state: Any, population: Any, rest: Any) -> Any:
        fields = type(state).POPULATION_FIELDS
        return state.replace(
            **{
                name: jax.tree.map(
                    lambda _, name=name: population if name in fields else rest,
                    getattr(state, name),
                )
                for name in state.__dataclass_fields__
            }
        )

    def state_shardings(self, state: Any) -> Any:
        """Where each leaf of a state (or its ``eval_shape``) belongs: the fields its class
        lists in ``POPULATION_FIELDS`` split over the mesh, the rest replicated; one device:
        the default device."""
        if self.mesh is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return self._shardings(state, device, device)
        return self._shardings(
            state, population_sharding(self.mesh), replicated_sharding(self.mesh)
        )

    def logical_shardings(self, state: Any) -> Any:
        """Where a logical state (P members: a checkpoint's) is restored before ``place``:
        replicated (P need not divide the devices); one device: the default device."""
        if self.mesh is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.tree.map(lambda _: device, state)
        return jax.tree.map(lambda _: replicated_sharding(self.mesh), state)

    # ----------------------------------------------------------------- inside jit

    def pad_state(self, state: Any) -> Any:
        """A logical state (P members) in its placed form (``padded`` members, sharded).
        Traceable."""
        fields = type(state).POPULATION_FIELDS
        state = state.replace(
            **{name: pad_rows(getattr(state, name), self.padded) for name in fields}
        )
        if self.mesh is None:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    def unpad_state(self, state: Any) -> Any:
        """A placed state's P real members. Traceable."""
        fields = type(state).POPULATION_FIELDS
        return state.replace(
            **{name: first_rows(getattr(state, name), self.size) for name in fields}
        )

    def map_members(self, fn: Callable, in_axes: Sequence[int | None]) -> Callable:
        """``jax.vmap(fn, in_axes)`` over the members, padded and sharded. Traceable.

        The mapped arguments (leading P) are padded to ``padded`` rows and split over the
        mesh, so each device computes ``padded / D`` members; the outputs are cut back to
        P. One device: exactly ``jax.vmap``.
        """
        mapped = jax.vmap(fn, in_axes=tuple(in_axes))
        if self.mesh is None:
            return mapped
        pop = population_sharding(self.mesh)

        def placed(*args):
            args = [
                a
                if axis is None
                else jax.lax.with_sharding_constraint(pad_rows(a, self.padded), pop)
                for a, axis in zip(args, in_axes)
            ]
            out = jax.lax.with_sharding_constraint(mapped(*args), pop)
            return first_rows(out, self.size)

        return placed

    # ----------------------------------------------------------------- host side

    def place(self, state: Any) -> Any:
        """A logical state (host or device arrays) padded and placed, by one jit (so that
        with several processes host values become global arrays)."""
        shardings = self.state_shardings(jax.eval_shape(self.pad_state, state))
        return jax.jit(self.pad_state, out_shardings=shardings)(state)

    def logical(self, state: Any) -> Any:
        """A placed state's P real members, replicated (what checkpoints and learngene files
        hold: the same on any device count)."""
        if self.mesh is None:
            return self.unpad_state(state)
        out = replicated_sharding(self.mesh)
        return jax.jit(self.unpad_state, out_shardings=out)(state)

    def replicate(self, tree: Any) -> Any:
        """``tree`` on every device (the pools); unchanged on one device."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        return replicate(tree, self.mesh)

    # ----------------------------------------------------------------- a generation

    def jit_tell(self, evo: Any) -> Callable:
        """``evo.tell`` on a placed state, jitted: ``(root_key, state, evaluation) ->
        (state, metrics)`` with the evaluation of the P real members."""

        def tell(root_key, state, evaluation):
            state, metrics = evo.tell(root_key, self.unpad_state(state), evaluation)
            return self.pad_state(state), metrics

        return jax.jit(tell)

    def jit_generation(self, evo: Any) -> Callable:
        """``evo.step`` on a placed state, jitted: ``(root_key, state, pools) -> (state,
        metrics)``, the members evaluated padded and split over the devices
        (``map_members``), then the same ``tell``."""

        def generation(root_key, state, pools):
            state = self.unpad_state(state)
            evaluation = evo.evaluate(
                root_key, state, pools, map_members=self.map_members
            )
            state, metrics = evo.tell(root_key, state, evaluation)
            return self.pad_state(state), metrics

        return jax.jit(generation)
