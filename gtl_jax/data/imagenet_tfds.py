"""The prepared tensorflow-datasets ``imagenet2012`` folder: records, labels, the index.

This module owns reading ImageNet-1K as prepared by tensorflow-datasets: finding the
``imagenet2012/<version>/`` folder, opening it (``PreparedImageNet``), reading records
by position, parsing each into JPEG bytes and a label, and the per-class index of record
positions (built in one pass over the labels, cached on disk). Decoding the JPEGs is
``imagenet_decode.py``'s; which records make a pool is ``imagenet.py``'s.

The folder holds
``<dir>/imagenet2012/<version>/imagenet2012-{train,validation}.array_record-XXXXX-of-YYYYY``
beside ``dataset_info.json`` and ``features.json``. It is opened with
``tfds.builder_from_directory(...).as_data_source(...)``, which serves records by position
without TensorFlow; each record is a serialized ``tf.train.Example`` (``image``: JPEG bytes,
``label``: int64, ``file_name``: bytes), parsed with the protobuf classes tensorflow-datasets
ships (``tensorflow_datasets.proto.tf_example_pb2``). Neither TensorFlow nor grain is
needed; tensorflow_datasets is imported only when a folder is opened. A shell module (I/O,
threads, no jit).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

from gtl_jax.data.files import (
    CACHE_VERSION,
    cache_key,
    candidate_dirs,
    default_cache_dir,
    tfds_data_dir,
    write_npz_atomic,
)
from gtl_jax.data.imagenet_decode import decode_image, default_threads
from gtl_jax.data.pool import DataError
from gtl_jax.progress import progress_bar

NAME = "imagenet"
TFDS_NAME = "imagenet2012"
TFDS_SPLITS = ("train", "validation")
# Records read per call to the data source while indexing.
_INDEX_CHUNK = 1024

HOW_TO_PREPARE = (
    "prepare it with tensorflow-datasets from the manual download (ILSVRC2012_img_train.tar "
    "and ILSVRC2012_img_val.tar from https://image-net.org/download-images): tfds build "
    "imagenet2012 --manual_dir=DIR_OF_THE_TARS --file_format=array_record "
    "--data_dir=DATA_DIR, then pass --config.data.data_dir=DATA_DIR (or set GTL_DATA_DIR or "
    "TFDS_DATA_DIR)"
)


# --------------------------------------------------------------------------- finding


def _is_prepared(folder: pathlib.Path) -> bool:
    return (folder / "dataset_info.json").is_file() and all(
        any(folder.glob(f"{TFDS_NAME}-{s}.array_record-*")) for s in TFDS_SPLITS
    )


def _version_key(folder: pathlib.Path) -> tuple:
    try:
        return tuple(int(p) for p in folder.name.split("."))
    except ValueError:
        return (-1,)


def prepared_folder(folder: pathlib.Path) -> pathlib.Path | None:
    """The prepared ``imagenet2012/<version>/`` folder ``folder`` is or holds (the newest
    version when several are prepared), else None. ``folder`` may be a tfds data dir, its
    ``imagenet2012/`` or a version folder."""
    for candidates in (
        [folder],
        sorted(folder.glob("*"), key=_version_key, reverse=True),
        sorted(folder.glob(f"{TFDS_NAME}/*"), key=_version_key, reverse=True),
    ):
        for c in candidates:
            if c.is_dir() and _is_prepared(c):
                return c
    return None


def find_prepared(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The prepared ``imagenet2012/<version>/`` folder.

    With ``data_dir`` only it (and its ``imagenet/`` subfolder) is searched; otherwise
    ``$GTL_DATA_DIR``, ``../shared/data/imagenet``, then ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``.

    Raises:
      DataError: one line naming every folder looked at and how to prepare the data.
    """
    looked_at = candidate_dirs(NAME, data_dir)
    if data_dir is None:
        looked_at.append(tfds_data_dir())
    for folder in looked_at:
        if folder.is_dir():
            found = prepared_folder(folder)
            if found is not None:
                return found
    raise DataError(
        "ImageNet-1K (a tensorflow-datasets imagenet2012 prepared as array_record, with "
        f"its train and validation splits) not found in {', '.join(map(str, looked_at))}; "
        + HOW_TO_PREPARE
    )


# --------------------------------------------------------------------------- records


def parse_record(record: bytes) -> tuple[bytes, int]:
    """A serialized ``tf.train.Example`` of imagenet2012 -> ``(JPEG bytes, label)``.

    Raises:
      ValueError: it is not one, or has no ``image`` bytes or ``label`` int.
    """
    from tensorflow_datasets.proto import tf_example_pb2  # noqa: PLC0415 (lazy)

    example = tf_example_pb2.Example.FromString(bytes(record))
    feature = example.features.feature
    if "image" not in feature or "label" not in feature:
        raise ValueError("the example has no 'image' or 'label' feature")
    images, labels = (
        feature["image"].bytes_list.value,
        feature["label"].int64_list.value,
    )
    if len(images) != 1 or len(labels) != 1:
        raise ValueError("'image' must be one JPEG and 'label' one int64")
    return images[0], int(labels[0])


class PreparedImageNet:
    """A prepared ``imagenet2012`` folder opened for reading records by position.

    Attributes:
      folder: the ``imagenet2012/<version>/`` folder.
      class_names: the label names (WordNet ids), label i being the i-th.
      files: the array_record files of both splits (the cache keys' identity).
    """

    def __init__(self, folder: pathlib.Path):
        self.folder = pathlib.Path(folder)
        self.files = sorted(self.folder.glob(f"{TFDS_NAME}-*.array_record-*"))
        try:
            info = json.loads((self.folder / "dataset_info.json").read_text())
        except (OSError, ValueError) as e:
            raise DataError(
                f"{self.folder / 'dataset_info.json'} cannot be read ({e}); "
                + HOW_TO_PREPARE
            ) from None
        if info.get("name") != TFDS_NAME or info.get("fileFormat") != "array_record":
            raise DataError(
                f"{self.folder} holds tensorflow-datasets {info.get('name')!r} in "
                f"{info.get('fileFormat')!r} files; expected {TFDS_NAME!r} in "
                f"'array_record' files ({HOW_TO_PREPARE})"
            )
        # tensorflow_datasets is imported only here: it is slow to import.
        import tensorflow_datasets as tfds  # noqa: PLC0415

        try:
            builder = tfds.builder_from_directory(str(self.folder))
            self.class_names = tuple(builder.info.features["label"].names)
            method = tfds.decode.DeserializeMethod.RAW_BYTES
            self._sources = {
                s: builder.as_data_source(split=s, deserialize_method=method)
                for s in TFDS_SPLITS
            }
        except Exception as e:
            raise DataError(
                f"tensorflow-datasets {TFDS_NAME} in {self.folder} cannot be opened "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                + HOW_TO_PREPARE
            ) from e

    def __len__(self) -> int:
        return len(self._sources["train"])

    def size(self, split: str) -> int:
        """The number of records of a tfds split (``train``, ``validation``)."""
        return len(self._sources[split])

    def read(self, split: str, positions: Sequence[int]) -> list[bytes]:
        """The serialized examples at ``positions`` of a tfds split."""
        source = self._sources[split]
        positions = [int(p) for p in positions]
        try:
            return list(source.__getitems__(positions))
        except Exception as e:
            raise DataError(
                f"{TFDS_NAME} {split} records in {self.folder} cannot be read "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]})"
            ) from e

    def labels(self, split: str, *, progress: bool = True) -> np.ndarray:
        """i32[N]: the label of every record of a tfds split, in one pass over it."""
        n = self.size(split)
        out = np.empty((n,), np.int32)
        with progress_bar(
            total=n,
            desc=f"indexing {TFDS_NAME} {split}",
            disable=not progress or n < 100_000,
            unit="record",
        ) as bar:
            for start in range(0, n, _INDEX_CHUNK):
                stop = min(n, start + _INDEX_CHUNK)
                for i, record in enumerate(self.read(split, range(start, stop))):
                    out[start + i] = self._parse(split, start + i, record)[1]
                bar.update(stop - start)
        bad = (out < 0) | (out >= len(self.class_names))
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{TFDS_NAME} {split} record {position} in {self.folder} has label "
                f"{int(out[position])}, outside the {len(self.class_names)} classes of "
                "its features.json"
            )
        return out

    def _parse(self, split: str, position: int, record: bytes) -> tuple[bytes, int]:
        try:
            return parse_record(record)
        except Exception as e:
            raise DataError(
                f"{TFDS_NAME} {split} record {position} in {self.folder} is not an "
                f"imagenet2012 example ({type(e).__name__}: {e})"
            ) from None

    def images(
        self, split: str, positions: np.ndarray, size: int, *, threads: int = 0
    ) -> np.ndarray:
        """u8[*positions.shape, size, size, 3]: the records at ``positions`` decoded
        (``decode_image``) in ``threads`` threads (0: one per core)."""
        flat = np.asarray(positions, np.int64).reshape(-1)
        # Sorted reads are sequential within array_record shards.
        order = np.argsort(flat, kind="stable")
        records = self.read(split, flat[order])

        def decode(i: int) -> np.ndarray:
            data, _ = self._parse(split, int(flat[order[i]]), records[i])
            try:
                return decode_image(data, size)
            except Exception as e:
                raise DataError(
                    f"{TFDS_NAME} {split} record {int(flat[order[i]])} in {self.folder}: "
                    f"its image cannot be decoded ({type(e).__name__}: {e})"
                ) from None

        out = np.empty((flat.size, size, size, 3), np.uint8)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=threads or default_threads(),
            thread_name_prefix="gtl-imagenet-decode",
        ) as pool:
            for i, image in enumerate(pool.map(decode, range(flat.size))):
                out[order[i]] = image
        return out.reshape(*np.shape(positions), size, size, 3)


# --------------------------------------------------------------------------- index


@dataclasses.dataclass(frozen=True)
class ClassIndex:
    """The record positions of each label in one tfds split.

    Attributes:
      order: i64[N], the record positions sorted by label (stable).
      starts: i64[L + 1], label l's positions are ``order[starts[l]:starts[l + 1]]``.
    """

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, num_labels: int) -> ClassIndex:
        counts = np.bincount(labels, minlength=num_labels)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(np.argsort(labels, kind="stable").astype(np.int64), starts)

    def count(self, label: int) -> int:
        return int(self.starts[label + 1] - self.starts[label])

    def positions(self, label: int) -> np.ndarray:
        return self.order[self.starts[label] : self.starts[label + 1]]


def _read_index(path: pathlib.Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as f:
            return {s: np.asarray(f[s], np.int32) for s in TFDS_SPLITS}
    except Exception as e:  # any damage: rebuild
        warnings.warn(f"ignoring unreadable imagenet index {path}: {e}", stacklevel=3)
        return None


def _write_index(path: pathlib.Path, labels: dict[str, np.ndarray]) -> None:
    write_npz_atomic(path, labels, "the imagenet index")


def index_path(
    data: PreparedImageNet, cache_dir: str | os.PathLike | None
) -> pathlib.Path:
    """Where the label index of ``data`` is cached: named by the identity of its files."""
    directory = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key((NAME, "index"), data.files)
    return directory.expanduser() / f"{NAME}_{CACHE_VERSION}_index_{key}.npz"


def load_labels(
    data: PreparedImageNet, cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """``{tfds split: i32[N] labels}``, read from the cache or built in one pass over every
    record (minutes for the real 1.28M train images: they are read once) and cached."""
    path = index_path(data, cache_dir)
    if path.is_file():
        labels = _read_index(path)
        if labels is not None and all(
            labels[s].shape == (data.size(s),) for s in TFDS_SPLITS
        ):
            return labels
    labels = {s: data.labels(s) for s in TFDS_SPLITS}
    _write_index(path, labels)
    return labels
