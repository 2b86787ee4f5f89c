"""Datasets as class pools, and the on-device sampling of tasks and episodes."""

from __future__ import annotations

import os
from collections.abc import Callable

from gtl_jax.data.augment import AUGMENTATIONS, augment_fn, random_crop_flip
from gtl_jax.data.cifar_fs import load_cifar_fs
from gtl_jax.data.imagenet import imagenet_stream, load_imagenet
from gtl_jax.data.mini_imagenet import load_mini_imagenet
from gtl_jax.data.npz import load_npz
from gtl_jax.data.omniglot import find_omniglot_dir, load_omniglot
from gtl_jax.data.pool import (
    ClassPool,
    DataError,
    Episode,
    sample_batch,
    sample_classes,
    sample_episode,
    to_float,
)
from gtl_jax.data.stream import PoolStream

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "STREAMS",
    "ClassPool",
    "DataError",
    "Episode",
    "PoolStream",
    "augment_fn",
    "find_omniglot_dir",
    "load_cifar_fs",
    "imagenet_stream",
    "load_dataset",
    "load_imagenet",
    "load_mini_imagenet",
    "load_npz",
    "load_omniglot",
    "random_crop_flip",
    "sample_batch",
    "sample_classes",
    "sample_episode",
    "to_float",
]

# name -> loader(data_dir, *, image_size, cache_dir) -> {split: ClassPool}.
DATASETS: dict[str, Callable[..., dict[str, ClassPool]]] = {
    "omniglot": load_omniglot,
    "cifar_fs": load_cifar_fs,
    "mini_imagenet": load_mini_imagenet,
    "npz": load_npz,
    "imagenet": load_imagenet,
}
# The datasets too large for memory, whose lifetime pools change every generation: name ->
# stream(data_dir, *, generations, image_size, cache_dir, **options) -> a
# ``gtl_jax.data.stream.PoolStream`` of ``{split: ClassPool}`` (the splits that change).
# Their loaders (above) return generation 0's pools and take the same options.
STREAMS: dict[str, Callable[..., PoolStream]] = {"imagenet": imagenet_stream}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    **options,
) -> dict[str, ClassPool]:
    """Loads the class pools of a registered dataset.

    Args:
      name: a key of ``DATASETS``.
      data_dir: passed to the loader (None: the loader searches).
      image_size: S; None means the dataset's default (28 for omniglot, 32 for cifar_fs,
        84 for mini_imagenet, 224 for imagenet, the file's own for npz).
      cache_dir: passed to the loader (None: its default).
      options: passed to the loader (the streamed datasets' class split, pool sizes and
        seed; see ``gtl_jax.data.imagenet.load_imagenet``).

    Returns:
      ``{split: ClassPool}``, e.g. ``'train'``, ``'val'``, ``'test'``.

    Raises:
      ValueError: if ``name`` is not registered.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    # Leaving image_size out keeps each loader's own default the only one.
    kwargs = {} if image_size is None else {"image_size": image_size}
    return DATASETS[name](data_dir, cache_dir=cache_dir, **kwargs, **options)
