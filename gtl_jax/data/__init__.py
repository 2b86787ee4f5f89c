"""Datasets as class pools, and the on-device sampling of tasks and episodes."""

from __future__ import annotations

import os
from collections.abc import Callable

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
    "DATASETS",
    "ClassPool",
    "DataError",
    "Episode",
    "find_omniglot_dir",
    "load_dataset",
    "load_omniglot",
    "sample_batch",
    "sample_classes",
    "sample_episode",
    "to_float",
]

# name -> loader(data_dir, *, image_size, cache_dir) -> {split: ClassPool}.
DATASETS: dict[str, Callable[..., dict[str, ClassPool]]] = {"omniglot": load_omniglot}


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
      image_size: S; None means the dataset's default (28 for omniglot).
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
