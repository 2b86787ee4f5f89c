"""``population_map``: a per-member function applied to every member of a population by
an execution strategy; the CPU form of the population axis.

Its semantics is always ``jax.vmap``; how it runs is an execution strategy:

- ``"vmap"``: ``jax.vmap`` in one jit. Expected best on GPU/TPU, where batched convs are fast
  (and what the pure generation, ``Evolution.step``, does everywhere).
- ``"loop"``: one compiled function of one member, called for each member index from a host
  loop, outputs stacked. On XLA CPU vmap turns every conv into a grouped conv, which runs
  slower than P separate convs: P=8 VGG11 x1/8, batch 32, loop 2373 images/s against vmap
  1117; members unrolled inside one jit 2259, but compiled in 20.9 s against 7.4 s
  (``docs/cpu/default_size.md``; ``benchmarks/strategies.py`` measures it). So the loop is the CPU form.
- ``"auto"``: ``"vmap"`` on GPU/TPU, ``"loop"`` on CPU.

Several devices: P is sharded over the ``"pop"`` mesh (``population_mesh``), each device
holding P / D members. ``"vmap"`` becomes one jit whose mapped inputs and outputs carry the
sharding constraint ``P("pop")``. ``"loop"`` stays a host loop over the P / D members of a
shard: step j runs one ``shard_map`` program in which every device trains its own member j
with the unbatched program of the one-device loop. It compiles once for all devices; its
numbers equal one device's to float tolerance (tests/executors/test_population_map.py). A P
not divisible by D is padded to the next multiple (copies of the last member, whose outputs
are dropped): every device runs ceil(P / D) members either way. One device: exactly the
single-device code, so its results do not change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from gtl_jax.population import population_size, stack
from gtl_jax.sharding import (
    POP_AXIS,
    first_rows,
    pad_rows,
    population_mesh,
    population_sharding,
    replicated_sharding,
)

STRATEGIES = ("auto", "vmap", "loop")


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
    fn: Callable,
    in_axes: Sequence[int | None],
    *,
    strategy: str = "auto",
    mesh: Mesh | None | str = "auto",
    carry: int | None = None,
) -> Callable:
    """A compiled function computing ``jax.vmap(fn, in_axes)(*args)`` by an execution strategy.

    Args:
      fn: a pure function of one individual whose outputs are pytrees of arrays.
      in_axes: for each positional argument, 0 (mapped over its leading axis P) or None (shared
        by all members).
      strategy: ``"vmap"``, ``"loop"`` or ``"auto"`` (see the module docstring).
      mesh: the ``"pop"`` mesh P is sharded over; ``"auto"``: ``population_mesh()`` (None, no
        sharding, on one device).
      carry: the position of a mapped argument (e.g. a train state) that ``fn`` returns
        updated as the first element of its output tuple. On one device it is donated (do not
        use the argument after the call), and the loop writes each member's update into it in
        place instead of stacking a new population after all members (measured even with
        stacking or faster: ``docs/cpu/forms_and_flags.md``, "Using both cores").

    Returns:
      A function of the same arguments with outputs stacked along a leading P. It is already
      compiled: call it from host code (with ``"loop"`` it is a host loop, not traceable).
      With a mesh, its outputs are sharded over ``"pop"`` when P is divisible by the mesh
      size; otherwise P is padded to the next multiple and the outputs are replicated.
    """
    in_axes = tuple(in_axes)
    if carry is not None and in_axes[carry] != 0:
        raise ValueError(f"carry={carry}: the carried argument must be mapped (axis 0)")
    strategy = resolve_strategy(strategy)
    if mesh == "auto":
        mesh = population_mesh()
    single = _single_device_map(fn, in_axes, strategy, carry)
    if mesh is None:
        return single
    sharded = _sharded_map(fn, in_axes, strategy, mesh)

    def mapped(*args):
        size = population_size([a for a, axis in zip(args, in_axes) if axis == 0])
        if size % mesh.size == 0:
            return sharded(*args)
        # P not divisible by the devices: padded with copies of the last member to the next
        # multiple, whose outputs are dropped. Each device still runs ceil(P / D) members,
        # the rounds an unpadded shard would take, so the padding costs no time.
        padded = size + (-size % mesh.size)
        mapped_args = [a for a, axis in zip(args, in_axes) if axis == 0]
        grown = iter(_pad_rows(mapped_args, padded, mesh))
        args = [next(grown) if axis == 0 else a for a, axis in zip(args, in_axes)]
        return _first_rows(sharded(*args), size, mesh)

    mapped.member = getattr(single, "member", None)
    mapped.sharded = sharded
    return mapped


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad_rows(trees: Any, size: int, mesh: Mesh) -> Any:
    return jax.lax.with_sharding_constraint(
        pad_rows(trees, size), population_sharding(mesh)
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _first_rows(tree: Any, size: int, mesh: Mesh) -> Any:
    return jax.lax.with_sharding_constraint(
        first_rows(tree, size), replicated_sharding(mesh)
    )


def _sharded_map(fn: Callable, in_axes: tuple, strategy: str, mesh: Mesh) -> Callable:
    pop = population_sharding(mesh)
    if strategy == "vmap":

        def constrained(*args):
            args = [
                jax.lax.with_sharding_constraint(a, pop) if axis == 0 else a
                for a, axis in zip(args, in_axes)
            ]
            out = jax.vmap(fn, in_axes=in_axes)(*args)
            return jax.lax.with_sharding_constraint(out, pop)

        return jax.jit(constrained)

    # Member i of every device's shard at once: one SPMD program whose per-device body is
    # the unbatched program of the one-device loop.
    def one_member(i, *args):
        out = fn(*(_take(a, i) if axis == 0 else a for a, axis in zip(args, in_axes)))
        return jax.tree.map(lambda x: x[None], out)

    specs = (PartitionSpec(),) + tuple(
        PartitionSpec(POP_AXIS) if axis == 0 else PartitionSpec() for axis in in_axes
    )
    member = jax.jit(
        jax.shard_map(
            one_member, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(POP_AXIS)
        )
    )
    # outs[j][d] is member j of device d, which holds members d * (P / D) + j.
    interleave = jax.jit(
        lambda outs: jax.tree.map(
            lambda *xs: jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:]), *outs
        ),
        out_shardings=pop,
    )

    def looped(*args):
        size = population_size([a for a, axis in zip(args, in_axes) if axis == 0])
        return interleave(
            [member(jnp.int32(i), *args) for i in range(size // mesh.size)]
        )

    looped.member = member
    return looped


def _single_device_map(
    fn: Callable, in_axes: tuple, strategy: str, carry: int | None = None
) -> Callable:
    donate = () if carry is None else (carry,)
    if strategy == "vmap":
        return jax.jit(jax.vmap(fn, in_axes=in_axes), donate_argnums=donate)
    if carry is not None:
        return _carried_loop(fn, in_axes, carry)

    @jax.jit
    def member(i, *args):
        return fn(*(_take(a, i) if axis == 0 else a for a, axis in zip(args, in_axes)))

    def looped(*args):
        size = population_size([a for a, axis in zip(args, in_axes) if axis == 0])
        # The member index is traced (an array), so one compilation serves every member.
        return _stack_jit([member(jnp.int32(i), *args) for i in range(size)])

    looped.member = member  # exposed for compile-count tests
    return looped


def _carried_loop(fn: Callable, in_axes: tuple, carry: int) -> Callable:
    """The loop with argument ``carry`` updated in place, member after member.

    Two programs per member: ``member`` runs ``fn`` on the member's rows, ``put`` writes the
    new row into the donated carry. ``put`` holds nothing but dynamic-update-slices, which XLA
    runs in place; one program that read the row and wrote it back had XLA CPU copy every
    buffer of the population at every member (slower than stacking at 32x32, width 1).
    """

    @jax.jit
    def member(i, *args):
        return fn(*(_take(a, i) if axis == 0 else a for a, axis in zip(args, in_axes)))

    @functools.partial(jax.jit, donate_argnums=0)
    def put(full, row, i):
        return jax.tree.map(
            lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x, i, 0), full, row
        )

    def looped(*args):
        args = list(args)
        size = population_size([a for a, axis in zip(args, in_axes) if axis == 0])
        rests = []
        for i in range(size):
            index = jnp.int32(i)
            new, *rest = member(index, *args)
            args[carry] = put(args[carry], new, index)
            rests.append(rest)
        return (args[carry], *_stack_jit(rests))

    looped.member = member  # exposed for compile-count tests
    looped.put = put
    return looped


_stack_jit = jax.jit(stack)
