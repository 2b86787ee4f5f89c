"""Populations of networks: stacked state, init, the train step and how it executes.

This module alone adds the population axis P. Per-network functions (``init_network``,
``train_step``) are written for one individual; ``population_map`` applies one to every member.
Its semantics is always ``jax.vmap``; how it runs is an execution strategy:

- ``"vmap"``: ``jax.vmap``. Expected best on GPU/TPU, where batched convs are fast.
- ``"loop"``: one compiled function of one member, called for each member index from a host
  loop, outputs stacked. On XLA CPU vmap turns every conv into a grouped conv, which runs slower
  than P separate convs (docs/cpu.md). benchmarks/population_step.py, P=8 VGG11 x1/8,
  batch 32 (benchmarks/results/): loop 2373 images/s, vmap 1117; members unrolled inside one jit
  2259, but its first call took 20.9 s against 7.4 s, as its compile time grows with P. So the
  loop is the CPU form.
- ``"auto"``: ``"vmap"`` on GPU/TPU, ``"loop"`` on CPU.

benchmarks/population_step.py and benchmarks/descendant_step.py measure the strategies.

Scale-out: with more than one device, ``population_map`` shards P over a 1-D device
mesh with axis ``"pop"`` (``population_mesh``; all devices of all processes), each device
holding P / D members. ``"vmap"`` becomes one jit whose mapped inputs and outputs carry the
sharding constraint ``P("pop")`` (XLA partitions the batched program; results equal one
device's to float tolerance). ``"loop"`` stays a host loop, over the P / D members of a shard:
step j runs one ``shard_map`` program in which every device trains its own member j with the
unbatched program of the one-device loop, on the device that holds it. It compiles once for
all devices (a jit per device would compile D times); its numbers equal one device's to float
tolerance (about 1e-7 after a few steps: XLA fuses the same program a little differently when
a shard holds one member; tests/test_sharding.py). A mapped size not divisible by D (e.g. the test episodes of descendants)
runs unsharded, as on one device; the evolve CLI refuses a ``pop_size`` not divisible by D
(padding would cost whole networks). One device: exactly the single-device code below, so
its results do not change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gtl_jax.data.pool import to_float

STRATEGIES = ("auto", "vmap", "loop")
POP_AXIS = "pop"


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
        stacking or faster: ``benchmarks/results/cpu_explore.md``, "Using both cores").

    Returns:
      A function of the same arguments with outputs stacked along a leading P. It is already
      compiled: call it from host code (with ``"loop"`` on one device it is a host loop, not
      traceable). With a mesh, its outputs are sharded over ``"pop"`` when P is divisible by
      the mesh size.
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
        return (sharded if size % mesh.size == 0 else single)(*args)

    mapped.member = getattr(single, "member", None)
    mapped.sharded = sharded
    return mapped


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
        return cross_entropy(logits, y), updates["batch_stats"]

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
