"""miniImageNet as class pools: 100 ImageNet classes split 64/16/20 (Ravi and Larochelle, 2017).

This module owns the miniImageNet data of the paper's second experiment (ResNet12, 84x84): it
reads one of the two pickle formats in circulation, checks it, and returns the ``'train'``,
``'val'`` and ``'test'`` pools, u8[C, 600, 84, 84, 3] named by WordNet id. The split ships as
``splits/mini_imagenet_{train,val,test}.txt``. A shell module (I/O, no jit).

Formats, tried in this order in each folder (see ``candidate_dirs``):

1. ``mini-imagenet-cache-{train,val,test}.pkl`` (``-validation.pkl`` is accepted for val):
   dicts with ``'image_data'`` u8[N, 84, 84, 3] and ``'class_dict'`` ``{wnid: [row, ...]}``.
2. ``miniImageNet_category_split_{train_phase_train,val,test}.pickle`` (the MetaOptNet files):
   dicts with ``'data'`` u8[N, 84, 84, 3], ``'labels'`` (N ints) and ``'catname2label'``
   ``{wnid: int}``.

Neither format has a published checksum, so the files are checked by structure: keys, dtype,
shape, the exact class set of each split and the same number of images in every class (600 in
the real files; synthetic test files hold fewer).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from gtl_jax.data.arrays import (
    build_pools,
    check_image_array,
    check_image_size,
    group_by_class,
)
from gtl_jax.data.files import (
    cache_key,
    cache_path,
    cached_pools,
    find_first_source,
    holds_any,
    read_split_lists,
)
from gtl_jax.data.pickles import load_split_pickle
from gtl_jax.data.pool import ClassPool, DataError

NAME = "mini_imagenet"
SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}
IMAGE_SIZE = 84
IMAGES_PER_CLASS = 600  # in the real files
# Each split's accepted file names, the first being the usual one.
CACHE_FILES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
METAOPTNET_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}
_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)

_HOW_TO_PROVIDE = (
    "Provide miniImageNet by passing --config.data.data_dir=... (data_dir=... in Python) or setting GTL_DATA_DIR to "
    "a folder (or its 'mini_imagenet/' subfolder) holding either "
    "mini-imagenet-cache-{train,val,test}.pkl or "
    "miniImageNet_category_split_{train_phase_train,val,test}.pickle."
)


def split_lists() -> dict[str, list[str]]:
    """The shipped 64/16/20 split: ``{split: [wnid, ...]}``."""
    return read_split_lists(NAME, SPLIT_SIZES)


def _cache_file(directory: pathlib.Path, split: str) -> pathlib.Path:
    """The existing file of a split in the cache format (else its usual name)."""
    for name in CACHE_FILES[split]:
        if (directory / name).is_file():
            return directory / name
    return directory / CACHE_FILES[split][0]


def find_source(data_dir: str | os.PathLike | None = None) -> tuple[str, pathlib.Path]:
    """Finds the first miniImageNet source: ``(kind, folder)``, kind ``'cache'`` or ``'metaoptnet'``.

    A folder counts when it holds any file of a format; a missing file of that format is then
    an error naming it (never a fallback to another format or folder).

    Raises:
      DataError: listing every folder looked at, if none holds a source.
    """
    probes = {
        "cache": holds_any(n for names in CACHE_FILES.values() for n in names),
        "metaoptnet": holds_any(METAOPTNET_FILES.values()),
    }
    return find_first_source(
        NAME, data_dir, probes, title="miniImageNet", how_to_provide=_HOW_TO_PROVIDE
    )


def _read_cache_split(path: pathlib.Path, split: str, classes: list[str]) -> np.ndarray:
    what = (
        "a dict with 'image_data' uint8 (N, 84, 84, 3) and 'class_dict' {wnid: [row, ...]} "
        f"of the {len(classes)} classes of splits/mini_imagenet_{split}.txt"
    )
    obj = load_split_pickle(
        path, ("image_data", "class_dict"), what=what, files="cache"
    )
    images = check_image_array(obj["image_data"], name=str(path), shape=_SHAPE)
    class_dict = obj["class_dict"]
    if not isinstance(class_dict, dict):
        raise DataError(
            f"{path}: 'class_dict' is a {type(class_dict).__name__}; expected {what}"
        )
    class_dict = {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in class_dict.items()
    }
    labels = np.full(images.shape[0], "", dtype=object)
    for wnid, rows in class_dict.items():
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= images.shape[0]):
            raise DataError(
                f"{path}: 'class_dict'[{wnid!r}] has rows outside [0, {images.shape[0]})"
            )
        if np.any(labels[rows] != ""):
            raise DataError(f"{path}: 'class_dict' gives some rows to two classes")
        labels[rows] = wnid
    if np.any(labels == ""):
        raise DataError(
            f"{path}: {int(np.sum(labels == ''))} rows of 'image_data' belong to no class of "
            "'class_dict'"
        )
    return group_by_class(
        images,
        labels.astype(str),
        classes,
        name=str(path),
        what=f"splits/mini_imagenet_{split}.txt",
    )


def _read_metaoptnet_split(
    path: pathlib.Path, split: str, classes: list[str]
) -> np.ndarray:
    what = (
        "a dict with 'data' uint8 (N, 84, 84, 3), 'labels' (N ints) and 'catname2label' "
        f"{{wnid: int}} of the {len(classes)} classes of splits/mini_imagenet_{split}.txt"
    )
    obj = load_split_pickle(
        path, ("data", "labels", "catname2label"), what=what, files="MetaOptNet"
    )
    images = check_image_array(obj["data"], name=str(path), shape=_SHAPE)
    catname2label = obj["catname2label"]
    if not isinstance(catname2label, dict):
        raise DataError(f"{path}: 'catname2label' is not a dict; expected {what}")
    wnid_of = {}
    for wnid, label in catname2label.items():
        wnid = wnid.decode() if isinstance(wnid, bytes) else str(wnid)
        if int(label) in wnid_of:
            raise DataError(
                f"{path}: 'catname2label' gives label {label} to two classes"
            )
        wnid_of[int(label)] = wnid
    labels = np.asarray(obj["labels"]).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (
        images.shape[0],
    ):
        raise DataError(
            f"{path}: 'labels' has shape {labels.shape} and dtype {labels.dtype}; expected "
            f"{images.shape[0]} ints"
        )
    unknown = sorted(set(labels.tolist()) - set(wnid_of))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} are not in 'catname2label'")
    return group_by_class(
        images,
        np.asarray([wnid_of[int(x)] for x in labels]),
        classes,
        name=str(path),
        what=f"splits/mini_imagenet_{split}.txt",
    )


def _source_files(kind: str, where: pathlib.Path) -> list[pathlib.Path]:
    if kind == "cache":
        files = [_cache_file(where, s) for s in SPLIT_SIZES]
    else:
        files = [where / f for f in METAOPTNET_FILES.values()]
    return [f for f in files if f.is_file()]


def load_mini_imagenet(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """Loads the miniImageNet train/val/test class pools.

    The pools are cached in ``cache_dir`` (one ``.npz``) under a name that includes the image
    size, the identity of the source files and the split lists, so later runs skip the
    pickles.

    Args:
      data_dir: a folder holding one of the formats (or its ``mini_imagenet/`` subfolder);
        searched for if None (``$GTL_DATA_DIR``, ``../shared/data/mini_imagenet``).
      image_size: S; 84 keeps the images as they are, another size area-resizes them.
      cache_dir: where to cache; default ``$GTL_CACHE_DIR`` or ``~/.cache/gtl_jax``.

    Returns:
      ``{'train': 64 classes, 'val': 16, 'test': 20}``, each a ``ClassPool`` with numpy
      ``images: u8[C, M, S, S, 3]`` (M = 600 in the real data) named by wnid.

    Raises:
      DataError: if no source is found, or a file is missing, truncated, or has a wrong
        key, shape, dtype or class set.
    """
    image_size = check_image_size(image_size)
    lists = split_lists()
    kind, where = find_source(data_dir)
    key = cache_key((NAME, kind), _source_files(kind, where), splits=NAME)

    def read(split: str) -> np.ndarray:
        if kind == "cache":
            return _read_cache_split(_cache_file(where, split), split, lists[split])
        return _read_metaoptnet_split(
            where / METAOPTNET_FILES[split], split, lists[split]
        )

    def build() -> dict[str, ClassPool]:
        return build_pools(read, lists, image_size, name=str(where))

    return cached_pools(cache_path(cache_dir, NAME, image_size, key), build)
