"""Any dataset as class pools: one ``.npz`` of images by class, and a small split file.

This module lets a user bring their own data (``--config.data.dataset=npz --config.data.data_dir=path/to/data.npz``).
The file holds:

- ``images``: uint8 ``(n_classes, n_per_class, H, W)`` or ``(n_classes, n_per_class, H, W, C)``;
- ``class_names`` (optional): ``n_classes`` strings; default ``'0'``, ``'1'``, ...

The meta-train / meta-validation / meta-test classes come from, in this order:

1. a text file beside it, ``<stem>_splits.txt`` (for ``data.npz``: ``data_splits.txt``), one
   line per split, each listing class indices, inclusive index ranges or class names::

       # 64 / 16 / 20 classes
       train: 0-63
       val: 64-79
       test: 80-89, 95, 90-94, 96-99

2. else int arrays ``train_classes``, ``val_classes``, ``test_classes`` in the ``.npz``.

Splits must be non-empty and disjoint; classes in no split are left out. A split may be left
out too: the pools are then only those listed, and a command that needs another one names it
(``python -m gtl_jax.inherit --config.suite.methods=learngene,scratch`` needs only ``test``, so a file whose
split lists ``test: 0-9`` is evaluated on all its 10 classes; the evolution needs all three).
A shell module (I/O, no jit); resized pools are cached like the other datasets'.
"""

from __future__ import annotations

import os
import pathlib
import re
import zipfile

import numpy as np

from gtl_jax.data.arrays import check_image_size, resize_images
from gtl_jax.data.files import (
    SPLITS,
    cache_key,
    cache_path,
    cached_pools,
)
from gtl_jax.data.pool import ClassPool, DataError

NAME = "npz"
SPLITS_SUFFIX = "_splits.txt"
_FORMAT = (
    "an .npz with 'images' uint8 of shape (n_classes, n_per_class, H, W) or "
    "(n_classes, n_per_class, H, W, C), optional 'class_names', and the split in "
    f"<stem>{SPLITS_SUFFIX} beside it or as int arrays train_classes, val_classes, "
    "test_classes in the file (README, 'Data')"
)


def find_npz(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """The ``.npz`` file: ``data_dir`` itself, or the only ``.npz`` in the folder ``data_dir``."""
    if data_dir is None or str(data_dir) == "":
        raise DataError(
            f"dataset 'npz' needs --config.data.data_dir=... (data_dir=... in Python): {_FORMAT}"
        )
    path = pathlib.Path(data_dir).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(
                f"{path} holds {len(found)} .npz files; pass the file itself as data_dir"
            )
        return found[0]
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected {_FORMAT}")
    return path


def parse_split_spec(
    text: str, class_names: tuple[str, ...], *, source: str
) -> dict[str, np.ndarray]:
    """Parses the lines ``split: item, item ...`` of a split file.

    An item is a class index (``7``), an inclusive index range (``0-63``) or a class name.

    Returns:
      ``{split: i64[C_split]}`` for each split listed (``'train'``, ``'val'``, ``'test'``).

    Raises:
      DataError: naming ``source`` on an unknown split or class, an index out of range, an
        empty split, no split at all, or a class in two splits.
    """
    index_of = {n: i for i, n in enumerate(class_names)}
    rows: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        split, sep, items = line.partition(":")
        split = split.strip()
        if not sep or split not in SPLITS:
            raise DataError(
                f"{source}:{number}: expected 'train: ...', 'val: ...' or 'test: ...', "
                f"got {line!r}"
            )
        if split in rows:
            raise DataError(f"{source}:{number}: split {split!r} is given twice")
        chosen: list[int] = []
        for item in re.split(r"[,\s]+", items.strip()):
            if not item:
                continue
            if re.fullmatch(r"\d+-\d+", item):
                lo, hi = (int(x) for x in item.split("-"))
                if lo > hi:
                    raise DataError(f"{source}:{number}: empty range {item!r}")
                chosen += range(lo, hi + 1)
            elif re.fullmatch(r"\d+", item):
                chosen.append(int(item))
            elif item in index_of:
                chosen.append(index_of[item])
            else:
                raise DataError(
                    f"{source}:{number}: {item!r} is not a class index or name"
                )
        rows[split] = chosen
    return _check_splits(rows, len(class_names), source=source)


def _check_splits(
    rows: dict[str, list[int]], num_classes: int, *, source: str
) -> dict[str, np.ndarray]:
    empty = [s for s in SPLITS if s in rows and not rows[s]]
    if empty or not rows:
        raise DataError(
            f"{source}: split(s) {empty} are empty"
            if empty
            else f"{source}: no split lists any class"
        )
    owner: dict[int, str] = {}
    for split in (s for s in SPLITS if s in rows):
        for i in rows[split]:
            if not 0 <= i < num_classes:
                raise DataError(
                    f"{source}: class index {i} of {split!r} is outside [0, {num_classes})"
                )
            if i in owner:
                raise DataError(
                    f"{source}: class {i} is in {owner[i]!r} and {split!r} (listed twice)"
                    if owner[i] == split
                    else f"{source}: class {i} is in both {owner[i]!r} and {split!r}"
                )
            owner[i] = split
    return {s: np.asarray(rows[s], dtype=np.int64) for s in SPLITS if s in rows}


def _read(path: pathlib.Path) -> tuple[np.ndarray, tuple[str, ...], dict | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            if "images" not in files:
                raise DataError(
                    f"{path}: no array 'images' (found {sorted(files)}); expected {_FORMAT}"
                )
            images = data["images"]
            names = data["class_names"] if "class_names" in files else None
            arrays = {
                s: data[f"{s}_classes"] for s in SPLITS if f"{s}_classes" in files
            }
    except DataError:
        raise
    except Exception as e:  # zipfile/IO errors, or an object array: a bad file.
        raise DataError(
            f"{path} cannot be read as an .npz file ({type(e).__name__}: {e})"
        ) from e
    given = images.shape  # the user's shape in the message, not the one made below
    if images.ndim == 4:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 5 or min(images.shape) < 1:
        convert = ""
        if images.dtype.kind == "f":
            convert = (
                "; convert float images in [0, 1] with "
                "(images * 255).round().astype(np.uint8)"
            )
        raise DataError(
            f"{path}: 'images' has dtype {images.dtype} and shape {given}; expected "
            f"uint8 (n_classes, n_per_class, H, W[, C]) with no empty axis{convert}"
        )
    if names is None:
        class_names = tuple(str(i) for i in range(images.shape[0]))
    else:
        class_names = tuple(str(n) for n in np.asarray(names).reshape(-1))
        if len(class_names) != images.shape[0] or len(set(class_names)) != len(
            class_names
        ):
            raise DataError(
                f"{path}: 'class_names' holds {len(class_names)} names "
                f"({len(set(class_names))} distinct) for {images.shape[0]} classes"
            )
    return images, class_names, (arrays or None)


def load_npz(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """Loads the class pools of a user ``.npz``: train/val/test, or those its split lists
    (see the module docstring).

    Args:
      data_dir: the ``.npz`` file, or a folder holding exactly one.
      image_size: S; None or the file's size keeps the images, another size area-resizes
        them (and caches the result in ``cache_dir``).
      cache_dir: where resized pools are cached; default ``$GTL_CACHE_DIR`` or
        ``~/.cache/gtl_jax``.

    Returns:
      ``{split: ClassPool}`` for ``'train'``, ``'val'``, ``'test'`` or the splits listed, with
      numpy ``images: u8[C, M, S, S, Ch]``.

    Raises:
      DataError: naming the file on a missing file, key or split, a wrong dtype or shape,
        or an inconsistent split.
    """
    path = find_npz(data_dir)
    split_file = path.with_name(path.stem + SPLITS_SUFFIX)

    def build() -> dict[str, ClassPool]:
        images, class_names, arrays = _read(path)
        if split_file.is_file():
            rows = parse_split_spec(
                split_file.read_text(encoding="utf-8"),
                class_names,
                source=str(split_file),
            )
        elif arrays is not None:
            lists = {}
            for split, array in arrays.items():
                if not np.issubdtype(array.dtype, np.integer):
                    raise DataError(
                        f"{path}: '{split}_classes' must hold class indices (ints)"
                    )
                lists[split] = array.reshape(-1).tolist()
            rows = _check_splits(lists, len(class_names), source=str(path))
        else:
            raise DataError(
                f"{path}: no split: neither {split_file} nor arrays train_classes, "
                f"val_classes, test_classes in the file; expected {_FORMAT}"
            )
        size = image_size if image_size is not None else images.shape[2]
        return {
            s: ClassPool(
                images=resize_images(images[r], size),
                class_names=tuple(class_names[i] for i in r),
            )
            for s, r in rows.items()
        }

    if image_size is None:
        return build()
    image_size = check_image_size(image_size)
    files = [path] + ([split_file] if split_file.is_file() else [])
    key = cache_key((NAME,), files)
    if _images_shape(path)[2:4] == (image_size, image_size):
        return build()
    return cached_pools(cache_path(cache_dir, NAME, image_size, key), build)


def _images_shape(path: pathlib.Path) -> tuple[int, ...]:
    """The shape of 'images' from its header alone (() if unreadable: then build() says why)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(f)
        return tuple(shape)
    except Exception:
        return ()
