"""Where the loaders' source files are, and how they are split, fetched, verified and cached.

This module owns what every class-pool loader does with files: finding a dataset's folder
(``candidate_dirs``, ``find_first_source``), the shipped split lists, checksums, verified
downloads and the cache (uint8 pools in one ``.npz`` per (dataset, image size, sources,
split lists) in ``$GTL_CACHE_DIR`` or ``~/.cache/gtl_jax``, written atomically). Every
loader (``cifar_fs.py``, ``mini_imagenet.py``, ``npz.py``, ``omniglot.py``,
``imagenet.py``) goes through it, so each checks and names files in its errors the same
way. A shell module (I/O, no jit).

Reading pickles safely lives in ``pickles.py`` and the array steps that build pools
(checks, grouping, resizing) in ``arrays.py``; their names stay importable from here,
where loaders written before the split import them.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import pathlib
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

# Re-exported (``name as name``): the names files.py held before pickles.py and arrays.py.
from gtl_jax.data.arrays import area_resize_matrix as area_resize_matrix
from gtl_jax.data.arrays import build_pools as build_pools
from gtl_jax.data.arrays import check_image_array as check_image_array
from gtl_jax.data.arrays import check_image_size as check_image_size
from gtl_jax.data.arrays import check_same_count as check_same_count
from gtl_jax.data.arrays import group_by_class as group_by_class
from gtl_jax.data.arrays import resize_images as resize_images
from gtl_jax.data.pickles import load_pickle as load_pickle
from gtl_jax.data.pickles import load_split_pickle as load_split_pickle
from gtl_jax.data.pickles import require_keys as require_keys
from gtl_jax.data.pool import ClassPool, DataError
from gtl_jax.progress import progress_bar

SPLITS_DIR = pathlib.Path(__file__).parent / "splits"
SPLITS = ("train", "val", "test")
# The parent of the ``gtl_jax`` package folder: the repository root in a checkout.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Bumped whenever a loader's output or the cache layout changes.
CACHE_VERSION = "v1"


# --------------------------------------------------------------------------- finding data


def tfds_data_dir() -> pathlib.Path:
    """Where tensorflow-datasets prepares datasets: ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets`` (read without importing tensorflow-datasets)."""
    env = os.environ.get("TFDS_DATA_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / "tensorflow_datasets"


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """Folders that may hold the files of dataset ``name``, in the order they are tried.

    An explicit ``data_dir`` is the only place looked at (itself, then its ``name/``
    subfolder); otherwise ``$GTL_DATA_DIR`` (and its ``name/``), then ``../shared/data/name``
    relative to the working directory and to the repository root.
    """
    if data_dir is not None:
        base = pathlib.Path(data_dir).expanduser()
        return [base, base / name]
    found: list[pathlib.Path] = []
    env_dir = os.environ.get("GTL_DATA_DIR")
    if env_dir:
        base = pathlib.Path(env_dir).expanduser()
        found += [base, base / name]
    shared = pathlib.Path("..", "shared", "data", name)
    found += [pathlib.Path.cwd() / shared, _REPO_ROOT / shared]
    unique: list[pathlib.Path] = []
    for path in found:
        if path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique


def find_first_source(
    name: str,
    data_dir: str | os.PathLike | None,
    probes: dict[str, Callable[[pathlib.Path], pathlib.Path | None]],
    *,
    title: str,
    how_to_provide: str,
    default_dirs: Sequence[pathlib.Path] = (),
) -> tuple[str, pathlib.Path]:
    """The first source of dataset ``name``: ``(kind, folder)``.

    Each folder of ``candidate_dirs`` (then ``default_dirs``, unless ``data_dir`` is given)
    is offered to every probe in turn; the first probe to return a folder wins.

    Args:
      name: the dataset, e.g. ``"cifar_fs"``.
      data_dir: see ``candidate_dirs``.
      probes: ``{kind: probe}`` in the order tried; ``probe(folder)`` returns where that
        kind's files are (usually ``folder``) or None.
      title: the dataset's name in the error, e.g. ``"CIFAR-FS"``.
      how_to_provide: the end of the error: what to put where.
      default_dirs: more folders to look at after the usual ones.

    Raises:
      DataError: listing every folder looked at, if no probe accepts any.
    """
    looked_at = candidate_dirs(name, data_dir)
    if data_dir is None:
        looked_at += default_dirs
    for folder in looked_at:
        for kind, probe in probes.items():
            where = probe(folder)
            if where is not None:
                return kind, where
    paths = "\n".join(f"  {p}" for p in looked_at)
    raise DataError(f"{title} data not found. Looked at:\n{paths}\n{how_to_provide}")


def holds_any(names: Iterable[str]) -> Callable[[pathlib.Path], pathlib.Path | None]:
    """A ``find_first_source`` probe: the folder, if it holds any file of ``names``."""
    names = tuple(names)
    return lambda folder: folder if any((folder / n).is_file() for n in names) else None


# --------------------------------------------------------------------------- split lists


def read_names(path: pathlib.Path) -> list[str]:
    """The names of a list file: one per line; ``#`` starts a comment; blank lines are
    skipped. Nothing is checked (``read_class_list`` checks); a missing file is an OSError.
    """
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def read_class_list(path: pathlib.Path) -> list[str]:
    """Class names of a split file: one per line; ``#`` starts a comment.

    Raises:
      DataError: if the file is missing or lists a class twice.
    """
    if not path.is_file():
        raise DataError(f"split file {path} is missing (it ships with the package)")
    names = read_names(path)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"split file {path} lists {repeated} more than once")
    return names


def read_split_lists(
    prefix: str, sizes: dict[str, int], *, splits_dir: pathlib.Path | None = None
) -> dict[str, list[str]]:
    """Reads ``{splits_dir}/{prefix}_{split}.txt`` for every split and checks the sizes.

    Args:
      prefix: e.g. ``"cifar_fs"``.
      sizes: the expected class count of each split, e.g. ``{"train": 64, ...}``.
      splits_dir: default: the package's ``splits/``.

    Raises:
      DataError: on a missing file, a wrong class count or splits that share a class.
    """
    splits_dir = SPLITS_DIR if splits_dir is None else splits_dir
    lists = {}
    for split, size in sizes.items():
        path = splits_dir / f"{prefix}_{split}.txt"
        names = read_class_list(path)
        if len(names) != size:
            raise DataError(
                f"split file {path} lists {len(names)} classes; expected {size}"
            )
        lists[split] = names
    seen: dict[str, str] = {}
    for split, names in lists.items():
        for name in names:
            if name in seen:
                raise DataError(
                    f"class {name!r} is in both the {seen[name]!r} and {split!r} split "
                    f"files of {prefix} in {splits_dir}"
                )
            seen[name] = split
    return lists


def split_lists_digest(prefix: str, splits_dir: pathlib.Path | None = None) -> bytes:
    """The bytes of the split files, for cache keys: an edited split never reuses a cache."""
    splits_dir = SPLITS_DIR if splits_dir is None else splits_dir
    return b"\0".join(
        (splits_dir / f"{prefix}_{s}.txt").read_bytes()
        for s in SPLITS
        if (splits_dir / f"{prefix}_{s}.txt").is_file()
    )


# --------------------------------------------------------------------------- checksums


def file_digest(path: pathlib.Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_digest(
    path: pathlib.Path, expected: str, *, algorithm: str = "md5", how_to_fix: str = ""
) -> None:
    """Raises DataError naming the file unless its digest is ``expected``."""
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise DataError(
            f"{path}: {algorithm} checksum mismatch: expected {expected}, got {actual}. "
            f"The file is corrupt, truncated or another version. {how_to_fix}"
        )


def sources_fingerprint(paths: Iterable[pathlib.Path]) -> str:
    """A cheap identity of source files (path, size, modification time) for cache keys.

    Hashing gigabytes of pickles on every load would cost seconds; a replaced or edited file
    changes its size or mtime, and the checksums that exist are verified whenever a cache is
    (re)built.
    """
    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(p).resolve() for p in paths):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- downloads

# Seconds to wait before the one retry of a failed download (tests set it to 0).
RETRY_WAIT_S = 2.0
_DOWNLOAD_TIMEOUT_S = 60.0
_DOWNLOAD_BLOCK = 1 << 16


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fetch_once(url: str, folder: pathlib.Path, name: str) -> tuple[pathlib.Path, str]:
    """Streams ``url`` into a temp file in ``folder``: ``(temp path, md5 hex)``.

    Raises:
      OSError: the transfer failed or was cut (fewer bytes than its Content-Length);
        the temp file is removed.
    """
    digest = hashlib.md5()
    tmp = tempfile.NamedTemporaryFile(
        dir=folder, prefix=f".{name}.", suffix=".part", delete=False
    )
    try:
        with tmp, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            got = 0
            with progress_bar(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {name}",
            ) as bar:
                while True:
                    try:
                        block = response.read(_DOWNLOAD_BLOCK)
                    except http.client.IncompleteRead as e:
                        got += len(e.partial)
                        raise OSError(
                            f"the transfer was cut after {got} of {total} bytes"
                        ) from None
                    if not block:
                        break
                    tmp.write(block)
                    digest.update(block)
                    got += len(block)
                    bar.update(len(block))
            if total is not None and got != total:
                raise OSError(f"the transfer was cut after {got} of {total} bytes")
            tmp.flush()
            os.fsync(tmp.fileno())
    except BaseException:
        pathlib.Path(tmp.name).unlink(missing_ok=True)
        raise
    return pathlib.Path(tmp.name), digest.hexdigest()


# A temp file of a download untouched this long is a killed process's (a live download
# writes every block, and gives up after _DOWNLOAD_TIMEOUT_S without data).
STALE_PART_S = 600.0


def remove_stale_parts(path: pathlib.Path) -> list[pathlib.Path]:
    """Removes the temp files (``.<name>.*.part``) that a killed download of ``path``
    left in its folder (a failure within the process removes its own); returns them."""
    removed = []
    now = time.time()
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                removed.append(part)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def download(
    url: str, path: pathlib.Path, *, md5: str, how_to_fix: str = "", attempts: int = 2
) -> None:
    """Downloads ``url`` to ``path`` if its MD5 is ``md5``; never leaves a partial file.

    The bytes go to a temp file in ``path``'s folder (with a progress bar on stderr),
    are checked against ``md5`` and only then renamed to ``path`` (atomic), so ``path``
    is either absent or whole and verified. A failed or refused attempt is tried once
    more (``attempts`` in all). Temp files of ``path`` that a killed earlier download
    left (untouched for ``STALE_PART_S``) are removed first.

    Args:
      url: what to fetch (``http(s)://`` or ``file://``).
      path: where the verified file goes; its folder must exist.
      md5: the expected MD5 (hex).
      how_to_fix: appended to the error message.
      attempts: tries in all.

    Raises:
      DataError: one line naming ``url``: unreachable or cut (the last reason), or
        ``md5 checksum mismatch: expected ..., got ...``; nothing is kept.
    """
    remove_stale_parts(path)
    error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(RETRY_WAIT_S)
        try:
            tmp, actual = _fetch_once(url, path.parent, path.name)
        except (OSError, ValueError, http.client.HTTPException) as e:
            # URLError and HTTPError are OSErrors; ValueError: a malformed URL.
            http_error = isinstance(e, urllib.error.HTTPError)
            reason = e if http_error else getattr(e, "reason", None) or e
            error = (
                f"cannot download {url} ({_one_line(reason)}; tried {attempt + 1} "
                f"time{'s' if attempt else ''})."
            )
            continue
        if actual != md5.lower():
            tmp.unlink(missing_ok=True)
            error = (
                f"{url}: md5 checksum mismatch: expected {md5}, got {actual}; the "
                f"download was refused and not kept as {path}."
            )
            continue
        os.chmod(tmp, 0o644)  # NamedTemporaryFile makes the file private (0600).
        os.replace(tmp, path)
        return
    raise DataError(_one_line(f"{error} {how_to_fix}"))


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> pathlib.Path:
    """``$GTL_CACHE_DIR`` or ``~/.cache/gtl_jax``."""
    env = os.environ.get("GTL_CACHE_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "gtl_jax"


def cache_key(
    parts: Sequence[object],
    files: Iterable[pathlib.Path],
    *,
    splits: str | None = None,
) -> str:
    """16 hex digits naming a cache: ``parts``, the source ``files`` and split lists.

    Args:
      parts: what else selects the pools, e.g. ``(dataset, source kind)``.
      files: the source files (see ``sources_fingerprint``).
      splits: the prefix of the shipped split files the pools follow, if any.
    """
    data = "".join(f"{p}\0" for p in parts).encode()
    data += sources_fingerprint(files).encode()
    if splits is not None:
        data += split_lists_digest(splits)
    return hashlib.sha256(data).hexdigest()[:16]


def cache_path(
    cache_dir: str | os.PathLike | None, dataset: str, image_size: int | None, key: str
) -> pathlib.Path:
    """``{cache_dir}/{dataset}_{CACHE_VERSION}_s{image_size}_{key}.npz``.

    Args:
      cache_dir: the folder; None or ``""``: ``default_cache_dir()``. A leading ``~``
        is expanded in either.
      image_size: None names the size ``native``.
      key: identifies the sources and splits, e.g. ``cache_key(...)``.
    """
    directory = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    size = "native" if image_size is None else f"s{image_size}"
    return directory.expanduser() / f"{dataset}_{CACHE_VERSION}_{size}_{key}.npz"


def read_cache(
    path: pathlib.Path, *, image_shape: tuple[int, ...] | None = None
) -> dict[str, ClassPool] | None:
    """The pools of a cache file, or None (with a warning) if it is unusable.

    Args:
      path: the cache file.
      image_shape: if given, what each pool's images must be after the class axis,
        ``(M, S, S, Ch)``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            pools = {}
            # The splits the pools were built with (all three, or those a user's npz lists).
            splits = [s for s in SPLITS if f"{s}_images" in data.files]
            if not splits:
                raise ValueError("no split")
            for split in splits:
                images = data[f"{split}_images"]
                names = tuple(str(n) for n in data[f"{split}_class_names"])
                if images.dtype != np.uint8 or images.ndim != 5:
                    raise ValueError(f"{split} images {images.dtype}{images.shape}")
                if images.shape[0] != len(names):
                    raise ValueError(
                        f"{split}: {len(names)} names, {images.shape[0]} classes"
                    )
                if image_shape is not None and images.shape[1:] != tuple(image_shape):
                    raise ValueError(
                        f"{split} images {images.shape}; expected "
                        f"{(len(names), *image_shape)}"
                    )
                pools[split] = ClassPool(images=images, class_names=names)
        return pools
    except Exception as e:  # Any damage means: rebuild from the sources.
        warnings.warn(f"ignoring unreadable dataset cache {path}: {e}", stacklevel=3)
        return None


def write_npz_atomic(
    path: pathlib.Path, arrays: dict[str, np.ndarray], what: str
) -> None:
    """Writes ``arrays`` to the ``.npz`` file ``path`` atomically; failing to write only
    costs a warning naming ``what`` (a cache is rebuilt when missing)."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file + os.replace: a concurrent reader sees no file or a whole one.
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            np.savez(f, **arrays)
        # NamedTemporaryFile makes the file private (0600); a cache is not secret.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except OSError as e:
        warnings.warn(f"could not write {what} {path}: {e}", stacklevel=3)
        if tmp_name is not None:
            pathlib.Path(tmp_name).unlink(missing_ok=True)


def write_cache(path: pathlib.Path, pools: dict[str, ClassPool]) -> None:
    """Writes the cache atomically; failing to write only costs a warning."""
    arrays = {}
    for split, pool in pools.items():
        arrays[f"{split}_images"] = np.asarray(pool.images)
        arrays[f"{split}_class_names"] = np.asarray(pool.class_names, dtype=str)
    write_npz_atomic(path, arrays, "the dataset cache")


def cached_pools(
    path: pathlib.Path,
    build_fn: Callable[[], dict[str, ClassPool]],
    *,
    image_shape: tuple[int, ...] | None = None,
) -> dict[str, ClassPool]:
    """The pools of the cache file ``path``, built by ``build_fn`` and written if absent.

    ``image_shape`` is passed to ``read_cache``: a cache that does not match it is rebuilt.
    """
    if path.is_file():
        pools = read_cache(path, image_shape=image_shape)
        if pools is not None:
            return pools
    pools = build_fn()
    write_cache(path, pools)
    return pools
