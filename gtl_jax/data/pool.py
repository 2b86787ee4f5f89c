"""Class pools and the on-device sampling of tasks, batches and episodes.

A few-shot dataset is a *class pool*: ``images: u8[C, M, H, W, Ch]`` (C classes, M images per
class) plus class names. Everything the method samples from a pool (a lifetime task, a training
batch, an N-way K-shot episode) is a pure, jittable gather driven by a key, so sampling happens on
the device inside the compiled steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class DataError(ValueError):
    """A dataset is missing, corrupt or does not have the expected shape."""


@struct.dataclass
class ClassPool:
    """Images of a set of classes.

    Attributes:
      images: u8[C, M, H, W, Ch], ``M`` images of each of ``C`` classes.
      class_names: C names, one per class (static metadata).
    """

    images: jax.Array | np.ndarray
    class_names: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def images_per_class(self) -> int:
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])


@struct.dataclass
class Episode:
    """An N-way K-shot episode with Q queries per class; labels are ``0..N-1``.

    Attributes:
      support_x: u8[N*K, H, W, Ch]; support_y: i32[N*K].
      query_x: u8[N*Q, H, W, Ch]; query_y: i32[N*Q].
    """

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


def sample_classes(key: jax.Array, num_classes: int, n_way: int) -> jax.Array:
    """Draws ``n_way`` distinct class indices out of ``num_classes``: i32[N]."""
    if n_way > num_classes:
        raise ValueError(
            f"n_way={n_way} is more than the {num_classes} classes of the pool"
        )
    return jax.random.choice(key, num_classes, (n_way,), replace=False)


def sample_episode(
    key: jax.Array, images: jax.Array, *, n_way: int, k_shot: int, n_query: int
) -> Episode:
    """Samples an N-way K-shot episode from ``images: u8[C, M, H, W, Ch]``.

    Classes are distinct, and within a class the support and query images are distinct draws.
    """
    num_classes, per_class = images.shape[:2]
    if k_shot + n_query > per_class:
        raise ValueError(
            f"k_shot + n_query = {k_shot + n_query} is more than the {per_class} images per class"
        )
    class_key, image_key = jax.random.split(key)
    classes = sample_classes(class_key, num_classes, n_way)
    # One independent permutation of the M images per chosen class.
    perms = jax.vmap(lambda k: jax.random.permutation(k, per_class))(
        jax.random.split(image_key, n_way)
    )[:, : k_shot + n_query]
    chosen = images[classes[:, None], perms]  # [N, K+Q, H, W, Ch]
    labels = jnp.broadcast_to(
        jnp.arange(n_way, dtype=jnp.int32)[:, None], (n_way, k_shot + n_query)
    )
    shape = images.shape[2:]
    return Episode(
        support_x=chosen[:, :k_shot].reshape(n_way * k_shot, *shape),
        support_y=labels[:, :k_shot].reshape(-1),
        query_x=chosen[:, k_shot:].reshape(n_way * n_query, *shape),
        query_y=labels[:, k_shot:].reshape(-1),
    )


def sample_batch(
    key: jax.Array,
    images: jax.Array,
    classes: jax.Array,
    *,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Samples a labelled batch from the classes of a task, with replacement.

    Args:
      key: PRNG key.
      images: u8[C, M, H, W, Ch], the pool.
      classes: i32[N], the task's classes; a sampled image of ``classes[n]`` gets label ``n``.
      batch_size: B.

    Returns:
      ``(x: u8[B, H, W, Ch], y: i32[B])``.
    """
    label_key, image_key = jax.random.split(key)
    y = jax.random.randint(label_key, (batch_size,), 0, classes.shape[0])
    idx = jax.random.randint(image_key, (batch_size,), 0, images.shape[1])
    return images[classes[y], idx], y.astype(jnp.int32)


def to_float(x: jax.Array) -> jax.Array:
    """uint8 images in [0, 255] to float32 in [0, 1]: ``x / 255``, the library's only
    normalisation (every loader gives uint8 pools; learngene files record it).

    Any other dtype is refused (a float image already in [0, 1], divided again by 255, would
    be near-black and train at chance accuracy without any error). The check is on the dtype,
    which is static, so it also holds under ``jit`` and ``vmap``.

    Raises:
      TypeError: ``x`` is not uint8.
    """
    dtype = jnp.result_type(x)
    if dtype != jnp.uint8:
        raise TypeError(
            f"images must be uint8 in [0, 255] (they are divided by 255), got {dtype}; "
            "convert float images in [0, 1] with (x * 255).round().astype(uint8)"
        )
    return x.astype(jnp.float32) * (1.0 / 255.0)
