"""Omniglot as class pools: finding, verifying, resizing, splitting and caching.

This module owns the Omniglot data of the method: it turns the two shipped arrays
(``images_background.npz``, ``images_evaluation.npz``, see
``../shared/data/omniglot/README.md``) into the ``'train'``, ``'val'`` and
``'test'`` class pools the population samples its lifetime tasks and evaluation
episodes from. It is a shell module (I/O, no jit): the pools it returns hold numpy
``uint8`` images and the caller puts them on the device.

Splits (alphabet-disjoint, 20 images per class):

- ``'train'``: the 787 background characters whose alphabet is not a validation
  alphabet (25 alphabets).
- ``'val'``: the 177 background characters of the 5 validation alphabets listed in
  ``splits/omniglot_val_alphabets.txt``.
- ``'test'``: the whole evaluation set, 659 characters of 20 alphabets.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from gtl_jax.data.files import (
    area_resize_matrix,
    cache_path,
    cached_pools,
    check_image_size,
    verify_digest,
)
from gtl_jax.data.pool import ClassPool, DataError

# Checksums of the source arrays, shipped here rather than read from the
# ``.sha256`` files next to them, so a replaced file cannot vouch for itself.
BACKGROUND_SHA256 = "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"
EVALUATION_SHA256 = "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"

NAME = "omniglot"
BACKGROUND_FILE = "images_background.npz"
EVALUATION_FILE = "images_evaluation.npz"
ALPHABETS_FILE = "alphabets.csv"
NUM_BACKGROUND_CLASSES = 964
NUM_EVALUATION_CLASSES = 659
IMAGES_PER_CLASS = 20
ORIGINAL_SIZE = 105

_SPLITS_DIR = pathlib.Path(__file__).parent / "splits"
VAL_ALPHABETS_FILE = _SPLITS_DIR / "omniglot_val_alphabets.txt"

# The parent of the ``gtl_jax`` package folder: the repository root in a checkout.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SHARED_RELPATH = pathlib.Path("..", "shared", "data", "omniglot")
_REQUIRED_FILES = (BACKGROUND_FILE, EVALUATION_FILE)
# 1024 images of 105x105 in float32 are ~45 MB; the whole background set at once
# would be ~850 MB.
_RESIZE_CHUNK = 1024

_HOW_TO_PROVIDE = (
    "Provide the Omniglot arrays by passing --data_dir (data_dir=...), by setting "
    "GTL_DATA_DIR, or by placing them at ../shared/data/omniglot (relative to the "
    "repository root or the working directory). The folder (or its 'omniglot/' "
    f"subfolder) must hold {BACKGROUND_FILE} and {EVALUATION_FILE}, each with an "
    f"array 'images' of dtype bool, shape ({NUM_BACKGROUND_CLASSES}, "
    f"{IMAGES_PER_CLASS}, {ORIGINAL_SIZE}, {ORIGINAL_SIZE}) and "
    f"({NUM_EVALUATION_CLASSES}, {IMAGES_PER_CLASS}, {ORIGINAL_SIZE}, "
    f"{ORIGINAL_SIZE}) respectively, plus {ALPHABETS_FILE}."
)


def _is_omniglot_dir(path: pathlib.Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def _both_forms(path: pathlib.Path) -> list[pathlib.Path]:
    """The folder itself, then its ``omniglot/`` subfolder."""
    return [path, path / "omniglot"]


def find_omniglot_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Finds the folder holding the Omniglot arrays.

    Looks, in order, at ``data_dir``, the env variable ``GTL_DATA_DIR`` (each either
    the Omniglot folder itself or a folder containing ``omniglot/``), then
    ``../shared/data/omniglot`` relative to the working directory and to the
    repository root. A folder counts when it holds both ``.npz`` files.

    Args:
      data_dir: an explicit folder. When given, nothing else is searched.

    Returns:
      The resolved Omniglot folder.

    Raises:
      DataError: if no folder is found; the message lists every path looked at.
    """
    if data_dir is not None:
        base = pathlib.Path(data_dir).expanduser()
        for candidate in _both_forms(base):
            if _is_omniglot_dir(candidate):
                return candidate.resolve()
        # An explicit path that is wrong is a user error worth reporting, not a
        # reason to silently use some other copy of the data.
        raise DataError(
            f"data_dir={str(base)!r} is not an Omniglot folder: neither it nor "
            f"{str(base / 'omniglot')!r} holds {BACKGROUND_FILE} and "
            f"{EVALUATION_FILE}. {_HOW_TO_PROVIDE}"
        )

    candidates: list[pathlib.Path] = []
    env_dir = os.environ.get("GTL_DATA_DIR")
    if env_dir:
        candidates += _both_forms(pathlib.Path(env_dir).expanduser())
    candidates += [pathlib.Path.cwd() / _SHARED_RELPATH, _REPO_ROOT / _SHARED_RELPATH]

    looked_at: list[pathlib.Path] = []
    for candidate in candidates:
        candidate = candidate.resolve()
        if candidate in looked_at:
            continue
        looked_at.append(candidate)
        if _is_omniglot_dir(candidate):
            return candidate
    paths = "\n".join(f"  {p}" for p in looked_at)
    env_note = f"GTL_DATA_DIR={env_dir!r}" if env_dir else "GTL_DATA_DIR is not set"
    raise DataError(
        f"Omniglot data not found ({env_note}). Looked at:\n{paths}\n{_HOW_TO_PROVIDE}"
    )


def verify_checksum(path: pathlib.Path, expected: str) -> None:
    """Raises ``DataError`` unless the file's SHA-256 is ``expected`` (hex)."""
    verify_digest(
        path,
        expected,
        algorithm="sha256",
        how_to_fix="Replace it with a fresh copy of the Omniglot arrays (see the README "
        "next to the shared data).",
    )


def check_images(images: np.ndarray, *, num_classes: int, file_name: str) -> None:
    """Checks the raw ``images`` array of one source file.

    Args:
      images: the array read from ``file_name``; expected ``bool[C, 20, 105, 105]``.
      num_classes: the expected ``C``.
      file_name: named in the error message.

    Raises:
      DataError: on a wrong dtype or shape.
    """
    expected = (num_classes, IMAGES_PER_CLASS, ORIGINAL_SIZE, ORIGINAL_SIZE)
    if images.dtype != np.bool_ or images.shape != expected:
        raise DataError(
            f"{file_name}: array 'images' has dtype {images.dtype} and shape "
            f"{images.shape}; expected dtype bool and shape {expected}."
        )


def _load_images(path: pathlib.Path, num_classes: int) -> np.ndarray:
    """Reads and checks ``images: bool[C, 20, 105, 105]`` of one source file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise DataError(
                    f"{path}: no array 'images' (found {sorted(data.files)}); "
                    f"expected bool images of shape ({num_classes}, "
                    f"{IMAGES_PER_CLASS}, {ORIGINAL_SIZE}, {ORIGINAL_SIZE})."
                )
            images = data["images"]
    except DataError:
        raise
    except Exception as e:  # zipfile/pickle/IO errors: all mean a bad file.
        raise DataError(f"{path}: cannot be read as an .npz file: {e}") from e
    check_images(images, num_classes=num_classes, file_name=path.name)
    return images


def ink_to_uint8(images: np.ndarray, image_size: int) -> np.ndarray:
    """Inverts, area-resizes and quantises raw Omniglot images.

    Args:
      images: bool[C, M, 105, 105] with ``True`` for white paper.
      image_size: S.

    Returns:
      u8[C, M, S, S, 1] with ink 255 and paper 0.
    """
    c, m, h, w = images.shape
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    resize = area_resize_matrix(h, image_size)
    flat = images.reshape(c * m, h, w)
    out = np.empty((c * m, image_size, image_size), np.uint8)
    for start in range(0, c * m, _RESIZE_CHUNK):
        ink = (~flat[start : start + _RESIZE_CHUNK]).astype(np.float32)
        small = resize @ ink @ resize.T
        out[start : start + _RESIZE_CHUNK] = np.clip(np.rint(small * 255.0), 0, 255)
    return out.reshape(c, m, image_size, image_size, 1)


def read_val_alphabets(path: pathlib.Path | None = None) -> list[str]:
    """Reads a split file (default: the shipped ``VAL_ALPHABETS_FILE``).

    One alphabet name per line; ``#`` starts a comment.
    """
    path = VAL_ALPHABETS_FILE if path is None else path
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def read_alphabets(data_dir: pathlib.Path) -> dict[str, list[str]]:
    """Maps each source file's rows to their alphabet using ``alphabets.csv``.

    Returns:
      ``{'background': [alphabet of row c] * 964, 'evaluation': [...] * 659}``.

    Raises:
      DataError: if the file is missing, malformed, or does not cover every id.
    """
    path = data_dir / ALPHABETS_FILE
    if not path.is_file():
        raise DataError(
            f"{path} is missing: it maps character ids to alphabets and is needed "
            f"for the alphabet-disjoint splits. {_HOW_TO_PROVIDE}"
        )
    # Row c of background is id c + 1; row c of evaluation is id c + 965.
    first_id = {"background": 1, "evaluation": NUM_BACKGROUND_CLASSES + 1}
    sizes = {"background": NUM_BACKGROUND_CLASSES, "evaluation": NUM_EVALUATION_CLASSES}
    rows: dict[str, list[str | None]] = {s: [None] * n for s, n in sizes.items()}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for record in csv.DictReader(f):
                rows_of_set = rows[record["set"]]
                first, last = int(record["first_id"]), int(record["last_id"])
                for char_id in range(first, last + 1):
                    row = char_id - first_id[record["set"]]
                    if not 0 <= row < len(rows_of_set) or rows_of_set[row] is not None:
                        raise ValueError(f"id {char_id} out of range or listed twice")
                    rows_of_set[row] = record["alphabet"]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{path} is malformed ({type(e).__name__}: {e}); expected columns "
            "set,alphabet,first_id,last_id with set in {background, evaluation}."
        ) from e
    for name, alphabets in rows.items():
        if None in alphabets:
            missing = alphabets.index(None) + first_id[name]
            raise DataError(f"{path}: character id {missing} ({name}) has no alphabet.")
    return rows  # type: ignore[return-value]


def class_names(alphabets: Sequence[str]) -> list[str]:
    """Names like ``'Armenian/character07'``: 1-based index within the alphabet."""
    counts: dict[str, int] = {}
    names = []
    for alphabet in alphabets:
        counts[alphabet] = counts.get(alphabet, 0) + 1
        names.append(f"{alphabet}/character{counts[alphabet]:02d}")
    return names


def split_background(
    alphabets: Sequence[str], val_alphabets: Sequence[str], *, source: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Splits the background classes by alphabet.

    Args:
      alphabets: the alphabet of each background class, in row order.
      val_alphabets: the alphabets that go to ``'val'``.
      source: where ``val_alphabets`` came from, for the error message.

    Returns:
      ``(train_rows: i64[C_train], val_rows: i64[C_val])``.

    Raises:
      DataError: if a validation alphabet is not a background alphabet.
    """
    known = set(alphabets)
    unknown = [a for a in val_alphabets if a not in known]
    if unknown:
        raise DataError(
            f"validation alphabets {unknown}{f' (from {source})' if source else ''}"
            f" are not background alphabets; known: {sorted(known)}"
        )
    is_val = np.isin(np.asarray(alphabets), np.asarray(list(val_alphabets), dtype=str))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _cache_path(
    cache_dir: str | os.PathLike | None, size: int, split_hash: str
) -> pathlib.Path:
    """The cache file, named by both source checksums and the split's hash."""
    key = (
        f"bg{BACKGROUND_SHA256[:12]}_ev{EVALUATION_SHA256[:12]}_split{split_hash[:12]}"
    )
    return cache_path(cache_dir, NAME, size, key)


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """Loads the Omniglot train/val/test class pools.

    The source checksums are verified on every call; the resized pools are cached
    in ``cache_dir`` under a name that includes ``image_size``, both source
    checksums and a hash of the split definition, so a changed split or size
    never reuses a stale cache.

    Args:
      data_dir: the Omniglot folder (or its parent); searched for if None, see
        ``find_omniglot_dir``.
      image_size: S, the side of the resized images (105 -> S by area averaging).
      cache_dir: where to cache; default env ``GTL_CACHE_DIR`` or
        ``~/.cache/gtl_jax``.

    Returns:
      ``{'train': 787 classes, 'val': 177 classes, 'test': 659 classes}``, each a
      ``ClassPool`` with numpy ``images: u8[C, 20, S, S, 1]`` (ink 255, paper 0)
      and names like ``'Armenian/character07'``.

    Raises:
      DataError: if the data is missing, corrupt, or of the wrong shape, or the
        split file names an alphabet that is not in the background set.
    """
    image_size = check_image_size(image_size)
    root = find_omniglot_dir(data_dir)
    background_path = root / BACKGROUND_FILE
    evaluation_path = root / EVALUATION_FILE
    verify_checksum(background_path, BACKGROUND_SHA256)
    verify_checksum(evaluation_path, EVALUATION_SHA256)

    split_file = VAL_ALPHABETS_FILE
    val_alphabets = read_val_alphabets(split_file)
    alphabets = read_alphabets(root)
    train_rows, val_rows = split_background(
        alphabets["background"], val_alphabets, source=str(split_file)
    )

    # alphabets.csv is not checksummed, so it is part of the split's identity too.
    split_hash = hashlib.sha256(
        split_file.read_bytes() + b"\0" + (root / ALPHABETS_FILE).read_bytes()
    ).hexdigest()

    def build() -> dict[str, ClassPool]:
        background = ink_to_uint8(
            _load_images(background_path, NUM_BACKGROUND_CLASSES), image_size
        )
        evaluation = ink_to_uint8(
            _load_images(evaluation_path, NUM_EVALUATION_CLASSES), image_size
        )
        background_names = class_names(alphabets["background"])
        return {
            "train": ClassPool(
                images=background[train_rows],
                class_names=tuple(background_names[i] for i in train_rows),
            ),
            "val": ClassPool(
                images=background[val_rows],
                class_names=tuple(background_names[i] for i in val_rows),
            ),
            "test": ClassPool(
                images=evaluation,
                class_names=tuple(class_names(alphabets["evaluation"])),
            ),
        }

    return cached_pools(
        _cache_path(cache_dir, image_size, split_hash),
        build,
        image_shape=(IMAGES_PER_CLASS, image_size, image_size, 1),
    )
