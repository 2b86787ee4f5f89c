"""Omniglot as class pools: finding, verifying, resizing, splitting and caching.

This module owns the Omniglot data of the method: it turns either source form into the
``'train'``, ``'val'`` and ``'test'`` class pools the population samples its lifetime
tasks and evaluation episodes from. It is a shell module (I/O, no jit): the pools it
returns hold numpy ``uint8`` images and the caller puts them on the device.

Source forms (both give the same pools, pixel for pixel):

- arrays: ``images_background.npz``, ``images_evaluation.npz`` and ``alphabets.csv``
  (see ``../shared/data/omniglot/README.md``), SHA-256 verified;
- official: the release's ``images_background.zip`` and ``images_evaluation.zip``
  (``<top>/<Alphabet>/characterNN/<id>_<drawer>.png``, 1-bit 105x105 PNGs read from
  the zip in memory by ``omniglot_zip.py``), MD5 verified. When no folder holds either form, these two are
  downloaded from ``OFFICIAL_URL`` (or ``$GTL_OMNIGLOT_URL``) into ``download_dir``.

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

from gtl_jax.data.arrays import area_resize_matrix, check_image_size
from gtl_jax.data.files import (
    SPLITS_DIR,
    cache_path,
    cached_pools,
    candidate_dirs,
    default_cache_dir,
    download,
    read_names,
    verify_digest,
)
from gtl_jax.data.omniglot_zip import (
    IMAGES_PER_CLASS,
    ORIGINAL_SIZE,
    read_official_alphabets,
    read_official_zip,
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

# The official release (github.com/brendenlake/omniglot, folder python/).
BACKGROUND_ZIP = "images_background.zip"
EVALUATION_ZIP = "images_evaluation.zip"
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
# A mirror (or a local server, a file:// folder) serving the two zips under these names.
URL_ENV = "GTL_OMNIGLOT_URL"
# The well-known MD5 of the two official zips (those torchvision verifies); a local or
# downloaded zip with another digest is refused.
OFFICIAL_MD5 = {
    BACKGROUND_ZIP: "68d2efa1b9178cc56df9314c21c6e718",
    EVALUATION_ZIP: "6b91aef0f799c5bb55b94e3f2daec811",
}
NUM_BACKGROUND_CLASSES = 964
NUM_EVALUATION_CLASSES = 659

VAL_ALPHABETS_FILE = SPLITS_DIR / "omniglot_val_alphabets.txt"

# 1024 images of 105x105 in float32 are ~45 MB; the whole background set at once
# would be ~850 MB.
_RESIZE_CHUNK = 1024

_HOW_TO_PROVIDE = (
    "Provide Omniglot by passing --config.data.data_dir=... (data_dir=... in Python), by setting GTL_DATA_DIR, "
    "or by placing it at ../shared/data/omniglot (relative to the repository root or "
    "the working directory). When no folder holds Omniglot, the official zips are "
    "downloaded (from $GTL_OMNIGLOT_URL or the official repository) into the existing "
    "folder that --config.data.data_dir or GTL_DATA_DIR names, else into "
    "~/.cache/gtl_jax/data/omniglot ($GTL_CACHE_DIR/data/omniglot). The folder "
    "(or its 'omniglot/' subfolder) must hold either the official release's "
    f"{BACKGROUND_ZIP} and {EVALUATION_ZIP} (from {OFFICIAL_URL}), or the arrays "
    f"{BACKGROUND_FILE} and {EVALUATION_FILE}, each with an "
    f"array 'images' of dtype bool, shape ({NUM_BACKGROUND_CLASSES}, "
    f"{IMAGES_PER_CLASS}, {ORIGINAL_SIZE}, {ORIGINAL_SIZE}) and "
    f"({NUM_EVALUATION_CLASSES}, {IMAGES_PER_CLASS}, {ORIGINAL_SIZE}, "
    f"{ORIGINAL_SIZE}) respectively, plus {ALPHABETS_FILE}."
)

ARRAYS = "arrays"
OFFICIAL = "official"
# Each source form, in the order a folder is probed: the files it must hold.
_FORMS = {
    ARRAYS: (BACKGROUND_FILE, EVALUATION_FILE),
    OFFICIAL: (BACKGROUND_ZIP, EVALUATION_ZIP),
}


def _form_of(path: pathlib.Path) -> str | None:
    """The source form whose files the folder holds (arrays first), or None."""
    for form, names in _FORMS.items():
        if all((path / name).is_file() for name in names):
            return form
    return None


def default_download_dir() -> pathlib.Path:
    """``$GTL_CACHE_DIR/data/omniglot`` or ``~/.cache/gtl_jax/data/omniglot``."""
    return default_cache_dir().expanduser() / "data" / NAME


def download_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the official zips are downloaded when no folder holds Omniglot.

    ``data_dir`` if given, else ``$GTL_DATA_DIR`` if set, else ``default_download_dir()``.
    """
    if data_dir is not None:
        return pathlib.Path(data_dir).expanduser()
    env_dir = os.environ.get("GTL_DATA_DIR")
    return pathlib.Path(env_dir).expanduser() if env_dir else default_download_dir()


def find_omniglot_source(
    data_dir: str | os.PathLike | None = None,
) -> tuple[str, pathlib.Path]:
    """Finds a folder holding Omniglot in either form, without downloading.

    Looks, in order, at ``data_dir``, the env variable ``GTL_DATA_DIR`` (each either
    the Omniglot folder itself or a folder containing ``omniglot/``), then
    ``../shared/data/omniglot`` relative to the working directory and to the
    repository root, then ``default_download_dir()``. A folder counts when it holds
    both ``.npz`` files (the arrays, preferred) or both official ``.zip`` files.

    Args:
      data_dir: an explicit folder. When given, nothing else is searched.

    Returns:
      ``(form, folder)``: ``form`` is ``ARRAYS`` or ``OFFICIAL``, ``folder`` resolved.

    Raises:
      DataError: if no folder is found; the message lists every path looked at.
    """
    # The folders (and each one's omniglot/) that every loader searches.
    candidates = candidate_dirs(NAME, data_dir)
    if data_dir is not None:
        for candidate in candidates:
            form = _form_of(candidate)
            if form is not None:
                return form, candidate.resolve()
        # An explicit path that is wrong is a user error worth reporting, not a
        # reason to silently use some other copy of the data.
        base, subfolder = candidates
        why = (
            "it does not exist"
            if not base.is_dir()
            else f"neither it nor {str(subfolder)!r} holds {BACKGROUND_ZIP} "
            f"and {EVALUATION_ZIP}, or {BACKGROUND_FILE} and {EVALUATION_FILE}"
        )
        raise DataError(
            f"data_dir={str(base)!r} is not an Omniglot folder: {why}. "
            f"{_HOW_TO_PROVIDE}"
        )

    candidates.append(default_download_dir())
    # Resolved for the message too: it names each folder once, as the OS sees it.
    looked_at: list[pathlib.Path] = []
    for candidate in candidates:
        candidate = candidate.resolve()
        if candidate in looked_at:
            continue
        looked_at.append(candidate)
        form = _form_of(candidate)
        if form is not None:
            return form, candidate
    paths = "\n".join(f"  {p}" for p in looked_at)
    env_dir = os.environ.get("GTL_DATA_DIR")
    env_note = f"GTL_DATA_DIR={env_dir!r}" if env_dir else "GTL_DATA_DIR is not set"
    raise DataError(
        f"Omniglot data not found ({env_note}). Looked at:\n{paths}\n{_HOW_TO_PROVIDE}"
    )


def find_omniglot_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder of ``find_omniglot_source`` (either form; nothing is downloaded)."""
    return find_omniglot_source(data_dir)[1]


def download_official(folder: pathlib.Path) -> None:
    """Downloads the official zips that ``folder`` lacks, MD5-verified.

    From ``$GTL_OMNIGLOT_URL`` (a base URL; the file names are appended) or
    ``OFFICIAL_URL``; see ``files.download`` (progress bar, one retry, temp file then
    atomic rename, nothing kept on failure).

    Raises:
      DataError: one line naming the URL, the files and ``folder``, if the server is
        unreachable or the transfer is cut, or naming the expected and actual MD5 if
        the file is another one.
    """
    base = os.environ.get(URL_ENV) or OFFICIAL_URL
    how_to_fix = (
        f"Put {BACKGROUND_ZIP} and {EVALUATION_ZIP} (from {OFFICIAL_URL}) in {folder}, "
        f"or set {URL_ENV} to a mirror serving them, or point --config.data.data_dir / GTL_DATA_DIR "
        f"at the Omniglot arrays ({BACKGROUND_FILE}, {EVALUATION_FILE}, "
        f"{ALPHABETS_FILE})."
    )
    for name in (BACKGROUND_ZIP, EVALUATION_ZIP):
        if (folder / name).is_file():
            continue  # verified with the other when loaded
        url = base.rstrip("/") + "/" + name
        download(url, folder / name, md5=OFFICIAL_MD5[name], how_to_fix=how_to_fix)


def _find_or_download(data_dir: str | os.PathLike | None) -> tuple[str, pathlib.Path]:
    """``find_omniglot_source``, else the official zips downloaded into ``download_dir``.

    An explicit ``data_dir`` (or ``$GTL_DATA_DIR``) must be an existing folder to be
    downloaded into; the default download folder is created.
    """
    try:
        return find_omniglot_source(data_dir)
    except DataError:
        target = download_dir(data_dir)
        if target == default_download_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.is_dir():
            raise
    download_official(target)
    return OFFICIAL, target.resolve()


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
    return read_names(VAL_ALPHABETS_FILE if path is None else path)


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
    cache_dir: str | os.PathLike | None,
    size: int,
    split_hash: str,
    *,
    form: str = ARRAYS,
) -> pathlib.Path:
    """The cache file, named by both source checksums and the split's hash.

    The two forms have their own names (``bg<sha256>`` / ``zipbg<md5>``) but the same
    pools.
    """
    if form == ARRAYS:
        sources = f"bg{BACKGROUND_SHA256[:12]}_ev{EVALUATION_SHA256[:12]}"
    else:
        background = OFFICIAL_MD5[BACKGROUND_ZIP]
        evaluation = OFFICIAL_MD5[EVALUATION_ZIP]
        sources = f"zipbg{background[:12]}_ev{evaluation[:12]}"
    return cache_path(cache_dir, NAME, size, f"{sources}_split{split_hash[:12]}")


def _pools(
    background: np.ndarray,
    background_alphabets: Sequence[str],
    evaluation: np.ndarray,
    evaluation_alphabets: Sequence[str],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
) -> dict[str, ClassPool]:
    """The three pools from the resized ``u8[C, 20, S, S, 1]`` of both sets."""
    background_names = class_names(background_alphabets)
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
            class_names=tuple(class_names(evaluation_alphabets)),
        ),
    }


def verify_official(root: pathlib.Path) -> None:
    """Raises ``DataError`` unless both official zips in ``root`` have their MD5."""
    for name in (BACKGROUND_ZIP, EVALUATION_ZIP):
        verify_digest(
            root / name,
            OFFICIAL_MD5[name],
            algorithm="md5",
            how_to_fix=f"Delete it to download it again from {OFFICIAL_URL}, or "
            "replace it with the official file.",
        )


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, ClassPool]:
    """Loads the Omniglot train/val/test class pools.

    Reads the arrays or the official zips (see ``find_omniglot_source``); if no folder
    holds either, downloads the official zips into ``download_dir(data_dir)`` first
    (``download_official``). The source checksums are verified on every call; the
    resized pools are cached in ``cache_dir`` under a name that includes
    ``image_size``, both source checksums and a hash of the split definition, so a
    changed split or size never reuses a stale cache. Both forms give the same pools.

    Args:
      data_dir: the Omniglot folder (or its parent); searched for if None, see
        ``find_omniglot_source``. An existing folder without Omniglot is downloaded
        into.
      image_size: S, the side of the resized images (105 -> S by area averaging).
      cache_dir: where to cache; default env ``GTL_CACHE_DIR`` or
        ``~/.cache/gtl_jax``.

    Returns:
      ``{'train': 787 classes, 'val': 177 classes, 'test': 659 classes}``, each a
      ``ClassPool`` with numpy ``images: u8[C, 20, S, S, 1]`` (ink 255, paper 0)
      and names like ``'Armenian/character07'``.

    Raises:
      DataError: if the data is missing and cannot be downloaded, is corrupt, or of
        the wrong shape, or the split file names an alphabet that is not in the
        background set.
    """
    image_size = check_image_size(image_size)
    form, root = _find_or_download(data_dir)
    if form == OFFICIAL:
        return _load_official(root, image_size, cache_dir)
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
        return _pools(
            background,
            alphabets["background"],
            evaluation,
            alphabets["evaluation"],
            train_rows,
            val_rows,
        )

    return cached_pools(
        _cache_path(cache_dir, image_size, split_hash),
        build,
        image_shape=(IMAGES_PER_CLASS, image_size, image_size, 1),
    )


def _load_official(
    root: pathlib.Path, image_size: int, cache_dir: str | os.PathLike | None
) -> dict[str, ClassPool]:
    """``load_omniglot`` from the official zips in ``root``."""
    verify_official(root)
    # The alphabets come from the zips themselves (verified above): no alphabets.csv.
    background_alphabets = read_official_alphabets(root / BACKGROUND_ZIP)
    evaluation_alphabets = read_official_alphabets(root / EVALUATION_ZIP)
    split_file = VAL_ALPHABETS_FILE
    train_rows, val_rows = split_background(
        background_alphabets, read_val_alphabets(split_file), source=str(split_file)
    )
    split_hash = hashlib.sha256(split_file.read_bytes()).hexdigest()

    def build() -> dict[str, ClassPool]:
        background = read_official_zip(root / BACKGROUND_ZIP).images
        evaluation = read_official_zip(root / EVALUATION_ZIP).images
        return _pools(
            ink_to_uint8(background, image_size),
            background_alphabets,
            ink_to_uint8(evaluation, image_size),
            evaluation_alphabets,
            train_rows,
            val_rows,
        )

    return cached_pools(
        _cache_path(cache_dir, image_size, split_hash, form=OFFICIAL),
        build,
        image_shape=(IMAGES_PER_CLASS, image_size, image_size, 1),
    )
