"""Image arrays into class pools: checks, grouping by class, area resizing.

This module owns the numpy steps between a loader's decoded source arrays and its
``{split: ClassPool}``: checking an image array's dtype and shape, stacking labelled
images class by class in the order of a split list, requiring the same number of images
per class, and exact area-average resizing. Pure numpy on the host (no I/O, no jit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gtl_jax.data.pool import ClassPool, DataError

# Images resized per einsum: bounds the float32 copy (512 images of 84x84x3 are ~43 MB).
_RESIZE_CHUNK = 512


def check_image_size(image_size) -> int:
    """``image_size`` as an int, if it is a positive one (the loaders' first check).

    Raises:
      ValueError: naming the value otherwise.
    """
    if not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def check_image_array(
    images, *, name: str, ndim: int = 4, shape: tuple = ()
) -> np.ndarray:
    """Checks an image array read from ``name``: uint8, ``ndim`` axes, trailing ``shape``."""
    if not isinstance(images, np.ndarray):
        raise DataError(
            f"{name}: images are a {type(images).__name__}; expected a uint8 array"
        )
    array = images
    tail_ok = not shape or tuple(array.shape[-len(shape) :]) == tuple(shape)
    if array.dtype != np.uint8 or array.ndim != ndim or not tail_ok:
        want = f"(N, {', '.join(map(str, shape))})" if shape else f"{ndim} axes"
        raise DataError(
            f"{name}: images have dtype {array.dtype} and shape {array.shape}; "
            f"expected uint8 of shape {want}"
        )
    return array


def group_by_class(
    images: np.ndarray,
    labels: Sequence,
    class_names: Sequence[str],
    *,
    name: str,
    what: str,
) -> np.ndarray:
    """Stacks labelled images into a pool, in the order of ``class_names``.

    Args:
      images: u8[N, H, W, Ch].
      labels: N class names (one per image).
      class_names: the C classes the file must hold, exactly.
      name: the source file(s), for errors.
      what: which split list ``class_names`` come from, for errors.

    Returns:
      u8[C, M, H, W, Ch]; within a class, images keep their file order.

    Raises:
      DataError: if the file's classes are not exactly ``class_names`` or the classes do
        not all have the same number of images.
    """
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{name}: {labels.shape[0] if labels.ndim else 0} labels for "
            f"{images.shape[0]} images; expected one label per image"
        )
    found = set(labels.tolist())
    expected = set(class_names)
    if found != expected:
        raise DataError(
            f"{name} holds {len(found)} classes, expected the {len(expected)} classes of "
            f"{what}; missing {sorted(expected - found)[:5]}, unexpected "
            f"{sorted(map(str, found - expected))[:5]}"
        )
    rows = [np.flatnonzero(labels == c) for c in class_names]
    counts = {len(r) for r in rows}
    if len(counts) != 1:
        raise DataError(
            f"{name}: classes have different numbers of images ({sorted(counts)}); "
            "a class pool needs the same number for every class"
        )
    return images[np.stack(rows)]


def check_same_count(pools: dict[str, ClassPool], *, name: str) -> None:
    """Every split of a dataset must have the same images per class (600 in the real files)."""
    counts = {s: p.images_per_class for s, p in pools.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{name}: images per class differ between splits: {counts}")


def build_pools(
    read_fn: Callable[[str], np.ndarray],
    lists: dict[str, list[str]],
    image_size: int,
    *,
    name: str,
) -> dict[str, ClassPool]:
    """One resized ``ClassPool`` per split, named by the split lists.

    Args:
      read_fn: ``read_fn(split)`` returns the split's images, u8[C, M, H, W, Ch] in the
        order of ``lists[split]``; splits are read one at a time.
      lists: ``{split: [class name, ...]}``.
      image_size: S.
      name: the source, for errors.

    Returns:
      ``{split: ClassPool}`` with images u8[C, M, S, S, Ch].

    Raises:
      DataError: if the splits have different numbers of images per class.
    """
    pools = {
        split: ClassPool(
            images=resize_images(read_fn(split), image_size), class_names=tuple(names)
        )
        for split, names in lists.items()
    }
    check_same_count(pools, name=name)
    return pools


def area_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The row-stochastic matrix of exact area averaging along one axis.

    Output pixel ``i`` covers ``[i, i + 1) * in_size / out_size`` of the input
    axis; its row holds the overlap of that interval with each input pixel,
    divided by the interval length.

    Returns:
      f32[out_size, in_size] whose rows sum to 1.
    """
    scale = in_size / out_size
    lo = np.arange(out_size, dtype=np.float64)[:, None] * scale
    pixel = np.arange(in_size, dtype=np.float64)[None, :]
    overlap = np.minimum(lo + scale, pixel + 1) - np.maximum(lo, pixel)
    return (np.clip(overlap, 0.0, None) / scale).astype(np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Area-resizes ``u8[..., H, W, Ch]`` square images to ``u8[..., S, S, Ch]``."""
    h, w = images.shape[-3:-1]
    if h == size and w == size:
        return images
    rows = area_resize_matrix(h, size)
    cols = area_resize_matrix(w, size)
    flat = images.reshape(-1, h, w, images.shape[-1])
    out = np.empty((flat.shape[0], size, size, flat.shape[-1]), np.uint8)
    for start in range(0, flat.shape[0], _RESIZE_CHUNK):
        x = flat[start : start + _RESIZE_CHUNK].astype(np.float32)
        y = np.einsum("ih,nhwc,jw->nijc", rows, x, cols, optimize=True)
        out[start : start + _RESIZE_CHUNK] = np.clip(np.rint(y), 0, 255)
    return out.reshape(*images.shape[:-3], size, size, images.shape[-1])
