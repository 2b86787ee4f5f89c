"""The 8x8 handwritten digits that ship with scikit-learn, as a class pool of another domain.

1,797 images of 10 digits (UCI optical recognition of handwritten digits, test part), 16 grey
levels, bright ink on a dark background like Omniglot as the library reads it (ink = 1). Every
class keeps its first 174 images (the smallest class has 174), scaled to uint8 and resized
(bilinear) to ``image_size``. All 10 classes form the ``test`` split: the pool is for
evaluating learngenes evolved elsewhere (adaptability to another dataset), so 5-way episodes
draw 5 of the 10 digits. Needs scikit-learn (a dependency of the package), which reads the
images from inside its own package: nothing is downloaded.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax.data.pool import ClassPool, DataError

PER_CLASS = 174


def load_digits(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """``{"test": ClassPool}`` of u8[10, 174, S, S, 1]; ``data_dir`` and ``cache_dir`` are
    accepted for the loaders' common signature and not used."""
    del data_dir, cache_dir
    try:
        from sklearn.datasets import load_digits as sklearn_digits  # noqa: PLC0415
    except ImportError:
        raise DataError(
            "the digits dataset needs scikit-learn: pip install scikit-learn"
        ) from None
    data = sklearn_digits()
    images = np.asarray(data.images, np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    labels = np.asarray(data.target)
    per_class = [images[labels == d][:PER_CLASS] for d in range(10)]
    pool = np.stack(per_class)[..., None]  # [10, 174, 8, 8, 1]
    resized = jax.image.resize(
        jnp.asarray(pool), (10, PER_CLASS, image_size, image_size, 1), "bilinear"
    )
    pixels = np.asarray(jnp.clip(jnp.round(resized * 255.0), 0, 255), np.uint8)
    return {"test": ClassPool(pixels, tuple(str(d) for d in range(10)))}
