"""scikit-learn's 8x8 digits as a class pool (the study's second dataset)."""

from __future__ import annotations

import numpy as np

from gtl_jax.data.digits import PER_CLASS, load_digits


def test_digits_pool_is_ten_classes_of_uint8_images_with_bright_ink():
    pool = load_digits(image_size=28)["test"]
    assert pool.images.shape == (10, PER_CLASS, 28, 28, 1)
    assert pool.images.dtype == np.uint8
    assert pool.class_names == tuple(str(d) for d in range(10))
    # Ink is bright on a dark background, as Omniglot is read: the corners are dark.
    corners = pool.images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() < 10 and pool.images.max() == 255
    # Two classes differ: the digits are not one image repeated.
    assert not np.array_equal(pool.images[0].mean(0), pool.images[1].mean(0))
    small = load_digits(image_size=8)["test"]
    assert small.images.shape == (10, PER_CLASS, 8, 8, 1)
