"""CIFAR-FS as class pools: the 100 CIFAR-100 classes split 64/16/20 (Bertinetto et al., 2019).

This module owns the CIFAR-FS data of the paper's first experiment (VGG11, 32x32): it finds one
of the three sources in circulation, checks it, and returns the ``'train'``, ``'val'`` and
``'test'`` pools, u8[C, 600, 32, 32, 3] with the CIFAR-100 fine label names as class names. The
split is the standard one, shipped as ``splits/cifar_fs_{train,val,test}.txt``. A shell module
(I/O, no jit); the pools are numpy and the caller puts them on the device.

Sources, tried in this order in each folder (see ``candidate_dirs``):

1. ``CIFAR_FS_{train,val,test}.pickle`` (the MetaOptNet files): dicts with ``'data'``
   u8[N, 32, 32, 3] and ``'labels'``, CIFAR-100 fine label ints.
2. ``cifar-100-python.tar.gz`` (the official archive, MD5-checked) or its extracted folder
   ``cifar-100-python/``: pickles ``train`` and ``test`` with ``'data'`` u8[N, 3072] (channel,
   row, column order) and ``'fine_labels'``, and ``meta`` with ``'fine_label_names'``. Train
   (500 per class) and test (100 per class) are merged: 600 per class.
3. tensorflow-datasets ``cifar100`` (array_record files; no tensorflow needed), prepared in the
   folder or in the tfds default folder (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

Every class must have the same number of images (600 in the real files; synthetic test files
hold fewer), and each file must hold exactly the classes its split lists.
"""

from __future__ import annotations

import os
import pathlib
import tarfile

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
    tfds_data_dir,
    verify_digest,
)
from gtl_jax.data.pickles import load_pickle, load_split_pickle, require_keys
from gtl_jax.data.pool import ClassPool, DataError

NAME = "cifar_fs"
SPLIT_SIZES = {"train": 64, "val": 16, "test": 20}
IMAGE_SIZE = 32
IMAGES_PER_CLASS = 600  # in the real files
METAOPTNET_FILES = {s: f"CIFAR_FS_{s}.pickle" for s in SPLIT_SIZES}
ARCHIVE = "cifar-100-python.tar.gz"
# The MD5 published with the archive at https://www.cs.toronto.edu/~kriz/cifar.html.
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FOLDER = "cifar-100-python"
FOLDER_FILES = ("train", "test", "meta")
TFDS_NAME = "cifar100"

_HOW_TO_PROVIDE = (
    "Provide CIFAR-FS by passing --config.data.data_dir=... (data_dir=... in Python) or setting GTL_DATA_DIR to a "
    "folder (or its 'cifar_fs/' subfolder) holding one of: CIFAR_FS_train.pickle, "
    "CIFAR_FS_val.pickle and CIFAR_FS_test.pickle (MetaOptNet); cifar-100-python.tar.gz "
    "(https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder "
    "cifar-100-python/; or a tensorflow-datasets 'cifar100' prepared there (its "
    "cifar100/<version>/ folder) or in $TFDS_DATA_DIR / ~/tensorflow_datasets."
)


def split_lists() -> dict[str, list[str]]:
    """The shipped 64/16/20 split: ``{split: [fine label name, ...]}``."""
    return read_split_lists(NAME, SPLIT_SIZES)


def fine_label_names(lists: dict[str, list[str]] | None = None) -> list[str]:
    """The 100 CIFAR-100 fine label names in label order.

    CIFAR-100 numbers its fine labels in alphabetical order of their names, so label ``i`` is
    the i-th name of the sorted union of the three split lists.
    """
    lists = split_lists() if lists is None else lists
    names = sorted(n for names in lists.values() for n in names)
    if len(names) != 100:
        raise DataError(
            f"the cifar_fs split files list {len(names)} classes; expected 100"
        )
    return names


# --------------------------------------------------------------------------- finding


def _tfds_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The array_record files of a prepared ``cifar100`` under ``directory``."""
    return sorted(directory.glob(f"{TFDS_NAME}/*/{TFDS_NAME}-*.array_record*"))


def find_source(data_dir: str | os.PathLike | None = None) -> tuple[str, pathlib.Path]:
    """Finds the first CIFAR-FS source: ``(kind, folder)``.

    ``kind`` is ``'metaoptnet'``, ``'archive'``, ``'folder'`` or ``'tfds'``. With an explicit
    ``data_dir`` only it (and its ``cifar_fs/`` subfolder) is searched.

    Raises:
      DataError: listing every folder looked at, if none holds a source.
    """

    def folder(d: pathlib.Path) -> pathlib.Path | None:
        if (d / FOLDER).is_dir():
            return d / FOLDER
        return d if d.name == FOLDER and d.is_dir() else None

    probes = {
        "metaoptnet": holds_any(METAOPTNET_FILES.values()),
        "archive": holds_any([ARCHIVE]),
        "folder": folder,
        "tfds": lambda d: d if _tfds_files(d) else None,
    }
    return find_first_source(
        NAME,
        data_dir,
        probes,
        title="CIFAR-FS",
        how_to_provide=_HOW_TO_PROVIDE,
        default_dirs=[tfds_data_dir()],
    )


# --------------------------------------------------------------------------- sources


def _metaoptnet_split(
    path: pathlib.Path, split: str, classes: list[str], names: list[str]
) -> np.ndarray:
    what = (
        "a dict with 'data' uint8 (N, 32, 32, 3) and 'labels' (N CIFAR-100 fine label "
        f"ints) of the {len(classes)} classes of splits/cifar_fs_{split}.txt"
    )
    obj = load_split_pickle(path, ("data", "labels"), what=what, files="MetaOptNet")
    images = check_image_array(obj["data"], name=str(path), shape=(32, 32, 3))
    labels = np.asarray(obj["labels"]).reshape(-1)
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.size
        and (labels.min() < 0 or labels.max() >= len(names))
    ):
        raise DataError(f"{path}: 'labels' must be fine label ints in [0, 100); {what}")
    label_names = np.asarray(names)[labels] if labels.size else labels.astype(str)
    return group_by_class(
        images,
        label_names,
        classes,
        name=str(path),
        what=f"splits/cifar_fs_{split}.txt",
    )


def _cifar100_pickles(read, names: list[str]):
    """Train+test of the CIFAR-100 python version: ``(u8[N, 32, 32, 3], N names)``.

    ``read(member)`` returns ``(bytes, display name)`` of ``train``, ``test`` or ``meta``.
    """
    meta_what = "a dict with 'fine_label_names' (100 names)"
    data, member = read("meta")
    meta = load_pickle(member, data=data, what=meta_what)
    require_keys(meta, ("fine_label_names",), name=str(member), what=meta_what)
    meta_names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]
    ]
    if meta_names != names:
        raise DataError(
            f"{member}: 'fine_label_names' are not the 100 CIFAR-100 fine labels in label "
            f"order (first differences: {[(a, b) for a, b in zip(meta_names, names) if a != b][:3]}, "
            f"{len(meta_names)} names)"
        )
    images, labels = [], []
    what = "a dict with 'data' uint8 (N, 3072) and 'fine_labels' (N ints in [0, 100))"
    for part in ("train", "test"):
        data, member = read(part)
        obj = load_pickle(member, data=data, what=what)
        require_keys(obj, ("data", "fine_labels"), name=str(member), what=what)
        flat = obj["data"]
        if (
            not isinstance(flat, np.ndarray)
            or flat.dtype != np.uint8
            or flat.ndim != 2
            or (flat.shape[1] != 3 * 32 * 32)
        ):
            raise DataError(
                f"{member}: 'data' has shape {getattr(flat, 'shape', None)} and dtype "
                f"{getattr(flat, 'dtype', type(flat).__name__)}; expected {what}"
            )
        fine = np.asarray(obj["fine_labels"]).reshape(-1)
        if (
            fine.shape != (flat.shape[0],)
            or not np.issubdtype(fine.dtype, np.integer)
            or (fine.size and (fine.min() < 0 or fine.max() >= 100))
        ):
            raise DataError(
                f"{member}: 'fine_labels' do not match 'data'; expected {what}"
            )
        # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
        images.append(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(names)[fine])
    return np.concatenate(images), np.concatenate(labels)


def _read_archive(path: pathlib.Path, names: list[str], md5: str | None):
    if md5 is not None:
        verify_digest(
            path,
            md5,
            algorithm="md5",
            how_to_fix="Download it again from https://www.cs.toronto.edu/~kriz/cifar.html.",
        )
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {}
            for part in FOLDER_FILES:
                member = f"{FOLDER}/{part}"
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise DataError(
                        f"{path} has no member {member}; expected the CIFAR-100 python "
                        f"archive with {', '.join(f'{FOLDER}/{p}' for p in FOLDER_FILES)}"
                    )
                members[part] = f.read()
    except DataError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, zlib errors: a bad archive.
        raise DataError(
            f"{path} cannot be read as a .tar.gz archive ({type(e).__name__}: {e}); it is "
            f"truncated or not the CIFAR-100 python archive. {_HOW_TO_PROVIDE}"
        ) from e
    return _cifar100_pickles(
        lambda part: (members[part], f"{path}:{FOLDER}/{part}"), names
    )


def _read_folder(folder: pathlib.Path, names: list[str]):
    def read(part):
        path = folder / part
        if not path.is_file():
            raise DataError(
                f"{path} is missing; the CIFAR-100 python folder {folder} must hold "
                f"{', '.join(FOLDER_FILES)}"
            )
        return path.read_bytes(), path

    return _cifar100_pickles(read, names)


def _read_tfds(directory: pathlib.Path, names: list[str]):
    # tensorflow_datasets is imported only here: it is slow to import.
    import tensorflow_datasets as tfds

    images, labels = [], []
    for part in ("train", "test"):
        try:
            source = tfds.data_source(
                TFDS_NAME, split=part, data_dir=str(directory), download=False
            )
            getitems = getattr(source, "__getitems__", None)
            n = len(source)
            examples = []
            for start in range(0, n, 2000):
                index = list(range(start, min(n, start + 2000)))
                examples += getitems(index) if getitems else [source[i] for i in index]
        except Exception as e:
            raise DataError(
                f"tensorflow-datasets {TFDS_NAME} ({part}) in {directory} cannot be read "
                f"({type(e).__name__}: {e}). {_HOW_TO_PROVIDE}"
            ) from e
        for ex in examples:
            if not isinstance(ex, dict) or "image" not in ex or "label" not in ex:
                raise DataError(
                    f"tensorflow-datasets {TFDS_NAME} in {directory}: an example has no "
                    "'image' or 'label'"
                )
        part_images = np.stack([np.asarray(ex["image"]) for ex in examples])
        check_image_array(
            part_images,
            name=f"tfds {TFDS_NAME} {part} in {directory}",
            shape=(32, 32, 3),
        )
        part_labels = np.asarray([int(ex["label"]) for ex in examples])
        if part_labels.size and (part_labels.min() < 0 or part_labels.max() >= 100):
            raise DataError(
                f"tfds {TFDS_NAME} {part} in {directory}: labels out of [0, 100)"
            )
        images.append(part_images)
        labels.append(np.asarray(names)[part_labels])
    return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------- loader


def _source_files(kind: str, where: pathlib.Path) -> list[pathlib.Path]:
    if kind == "metaoptnet":
        return [where / f for f in METAOPTNET_FILES.values() if (where / f).is_file()]
    if kind == "archive":
        return [where / ARCHIVE]
    if kind == "folder":
        return [where / f for f in FOLDER_FILES if (where / f).is_file()]
    return _tfds_files(where)


def load_cifar_fs(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    cache_dir: str | os.PathLike | None = None,
    archive_md5: str | None = ARCHIVE_MD5,
) -> dict[str, ClassPool]:
    """Loads the CIFAR-FS train/val/test class pools.

    The pools are cached in ``cache_dir`` under a name that includes the image size, the
    identity of the source files and the split lists; the archive's MD5 is checked whenever
    the cache is built.

    Args:
      data_dir: a folder holding a source (or its ``cifar_fs/`` subfolder); searched for if
        None (``$GTL_DATA_DIR``, ``../shared/data/cifar_fs``, the tfds default folder).
      image_size: S; 32 keeps the images as they are, another size area-resizes them.
      cache_dir: where to cache; default ``$GTL_CACHE_DIR`` or ``~/.cache/gtl_jax``.
      archive_md5: the MD5 ``cifar-100-python.tar.gz`` must have (default: the official
        archive's); None skips the check.

    Returns:
      ``{'train': 64 classes, 'val': 16, 'test': 20}``, each a ``ClassPool`` with numpy
      ``images: u8[C, M, S, S, 3]`` (M = 600 in the real data) named by fine label.

    Raises:
      DataError: if no source is found, a file is missing, truncated, has a wrong key,
        shape, dtype, checksum or class set, or the split files are inconsistent.
    """
    image_size = check_image_size(image_size)
    lists = split_lists()
    names = fine_label_names(lists)
    kind, where = find_source(data_dir)
    files = _source_files(kind, where)
    key = cache_key((NAME, kind, archive_md5), files, splits=NAME)

    def build() -> dict[str, ClassPool]:
        if kind == "metaoptnet":
            return build_pools(
                lambda s: _metaoptnet_split(
                    where / METAOPTNET_FILES[s], s, lists[s], names
                ),
                lists,
                image_size,
                name=str(where),
            )
        if kind == "archive":
            images, labels = _read_archive(where / ARCHIVE, names, archive_md5)
            source = str(where / ARCHIVE)
        elif kind == "folder":
            images, labels = _read_folder(where, names)
            source = str(where)
        else:
            images, labels = _read_tfds(where, names)
            source = f"tensorflow-datasets {TFDS_NAME} in {where}"
        every = group_by_class(
            images, labels, names, name=source, what="the 100 CIFAR-100 classes"
        )
        row = {n: i for i, n in enumerate(names)}
        return build_pools(
            lambda s: every[[row[n] for n in lists[s]]],
            lists,
            image_size,
            name=str(where),
        )

    return cached_pools(cache_path(cache_dir, NAME, image_size, key), build)
