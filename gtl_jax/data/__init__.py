"""Datasets as class pools, and the on-device sampling of tasks and episodes."""

from __future__ import annotations

import os
from collections.abc import Callable

from gtl_jax.data.augment import AUGMENTATIONS, augment_fn, random_crop_flip
from gtl_jax.data.cifar_fs import load_cifar_fs
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

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ClassPool",
    "DataError",
    "Episode",
    "augment_fn",
    "find_omniglot_dir",
    "load_cifar_fs",
    "load_dataset",
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
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """Loads the class pools of a registered dataset.

    Args:
      name: a key of ``DATASETS``.
      data_dir: passed to the loader (None: the loader searches).
      image_size: S; None means the dataset's default (28 for omniglot, 32 for cifar_fs,
        84 for mini_imagenet, the file's own for npz).
      cache_dir: passed to the loader (None: its default).

    Returns:
      ``{split: ClassPool}``, e.g. ``'train'``, ``'val'``, ``'test'``.

    Raises:
      ValueError: if ``name`` is not registered.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    # Leaving image_size out keeps each loader's own default the only one.
    kwargs = {} if image_size is None else {"image_size": image_size}
    return DATASETS[name](data_dir, cache_dir=cache_dir, **kwargs)
