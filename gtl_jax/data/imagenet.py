"""ImageNet-1K (ILSVRC 2012) as class pools streamed generation by generation.

The source is what the JAX ecosystem reads: the tensorflow-datasets ``imagenet2012`` builder
prepared from the user's manual download into array_record files,
``<dir>/imagenet2012/<version>/imagenet2012-{train,validation}.array_record-XXXXX-of-YYYYY``
beside ``dataset_info.json`` and ``features.json``. It is opened with
``tfds.builder_from_directory(...).as_data_source(...)``, which serves records by position
without TensorFlow; each record is a serialized ``tf.train.Example`` (``image``: JPEG bytes,
``label``: int64, ``file_name``: bytes), parsed with the protobuf classes tensorflow-datasets
ships (``tensorflow_datasets.proto.tf_example_pb2``) and decoded with Pillow. Neither
TensorFlow nor grain is needed; tensorflow_datasets is imported only when a folder is
opened. A shell module (I/O, threads, no jit).

Preparing it (once; needs the two tars from https://image-net.org/download-images, and
TensorFlow only for this step, e.g. ``pip install tensorflow-cpu``)::

  tfds build imagenet2012 --manual_dir=/path/to/tars --file_format=array_record \\
      --data_dir=/path/to/tensorflow_datasets

**The class split** (``data.classes``, default 800,100,100): the classes present in the
train split, by label id (WordNet ids in sorted order, as tfds numbers them), put in the
order of a fixed permutation (``numpy.random.default_rng(SPLIT_SEED).permutation``); the
first ``test`` of that order are the downstream classes, the next ``val`` the critics', the
next ``train`` the evolution's. The order does not depend on the run's seed or on the sizes,
so every seed and every evolution is evaluated on the same held-out classes, and changing the
number of evolution classes moves no critic or downstream class.

**The pools.** Each split is a ``ClassPool`` of uint8 images, the shorter side resized to
``image_size`` (Pillow, bicubic, JPEG draft decoding where it is exact enough) and centre
cropped square:

- ``train`` (lifetime tasks): ``classes_per_generation`` of the evolution classes,
  ``images_per_class`` train-split images each, drawn anew every generation from
  ``(seed, generation)`` (``ImageNetSampler.train_pool``); ``load_imagenet`` returns
  generation 0's.
- ``val`` (critic episodes): every critic class, ``eval_images_per_class`` train-split images
  each, drawn once from ``seed``: the critics judge every generation on the same images,
  so fitness stays comparable across generations.
- ``test`` (the final table, ``inherit``): every downstream class, ``eval_images_per_class``
  images each of the tfds ``validation`` split (the official held-out images; 50 per class),
  drawn once with a fixed key, the same for every seed.

**Streaming.** The dataset is never held in memory: a per-class index (the record positions
of each label, built in one pass over the labels of both splits and cached on disk) makes a
pool a set of random reads. ``imagenet_stream`` gives a ``gtl_jax.data.stream.PoolStream``
that decodes generation g + 1's train pool in a background thread while generation g trains,
and the same ``(seed, generation)`` always gives the same pool (a killed run resumes to the
same result). Memory: on the host, the loaded pools (generation 0's train, val, test) and at
most two streamed train pools (the one being placed on the devices, the next one being
decoded); on each device, generation 0's train pool (the evolution's own), the current one
and the val pool; never the dataset. Every pool of a run has the same shape, so the jitted
generation compiles once.

**Several hosts.** Every process builds the same pools from the same keys (each host decodes
the whole generation pool, about 3.5 ms per 224-pixel image per core; the pools are
replicated on every device, since every member samples from every class): no data moves
between hosts, at the cost of redundant decoding hidden behind training by the prefetch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from gtl_jax.data.arrays import check_image_size
from gtl_jax.data.files import (
    CACHE_VERSION,
    cache_key,
    cache_path,
    cached_pools,
    candidate_dirs,
    default_cache_dir,
    write_npz_atomic,
)
from gtl_jax.data.pool import ClassPool, DataError
from gtl_jax.data.stream import PoolStream

NAME = "imagenet"
TFDS_NAME = "imagenet2012"
TFDS_SPLITS = ("train", "validation")
# Defaults of the data section's fields (gtl_jax.experiment.DataConfig reads them here).
IMAGE_SIZE = 224
CLASSES = "800,100,100"  # train (evolution), val (critics), test (downstream)
CLASSES_PER_GENERATION = 100
IMAGES_PER_CLASS = 100
EVAL_IMAGES_PER_CLASS = 20
# The seed of the class order (see the module docstring); never the run's seed.
SPLIT_SEED = 0
# Streams of the pool keys: (seed, stream, generation) seeds numpy's generator.
_TRAIN_STREAM, _VAL_STREAM, _TEST_STREAM = 0, 1, 2
# Records read per call to the data source while indexing.
_INDEX_CHUNK = 1024

HOW_TO_PREPARE = (
    "prepare it with tensorflow-datasets from the manual download (ILSVRC2012_img_train.tar "
    "and ILSVRC2012_img_val.tar from https://image-net.org/download-images): tfds build "
    "imagenet2012 --manual_dir=DIR_OF_THE_TARS --file_format=array_record "
    "--data_dir=DATA_DIR, then pass --config.data.data_dir=DATA_DIR (or set GTL_DATA_DIR or "
    "TFDS_DATA_DIR)"
)


# --------------------------------------------------------------------------- options


def parse_classes(classes: str | Sequence[int]) -> tuple[int, int, int]:
    """``"800,100,100"`` -> ``(800, 100, 100)``: the train, val and test class counts.

    Raises:
      ValueError: not three positive ints.
    """
    if isinstance(classes, str):
        try:
            values = tuple(int(v) for v in classes.split(","))
        except ValueError:
            values = ()
    else:
        values = tuple(int(v) for v in classes)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(
            f"classes={classes!r}: must be three positive ints, train,val,test "
            "(e.g. 800,100,100)"
        )
    return values


@dataclasses.dataclass(frozen=True)
class Options:
    """What selects the pools beyond the folder (the ``data`` section's fields and the run's
    seed); checked on construction (ValueError naming the field)."""

    image_size: int = IMAGE_SIZE
    classes: str = CLASSES
    classes_per_generation: int = CLASSES_PER_GENERATION
    images_per_class: int = IMAGES_PER_CLASS
    eval_images_per_class: int = EVAL_IMAGES_PER_CLASS
    seed: int = 0

    def __post_init__(self):
        check_image_size(self.image_size)
        parse_classes(self.classes)
        for field in (
            "classes_per_generation",
            "images_per_class",
            "eval_images_per_class",
        ):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field}={getattr(self, field)!r}: must be >= 1")
        n_train = parse_classes(self.classes)[0]
        if self.classes_per_generation > n_train:
            raise ValueError(
                f"classes_per_generation={self.classes_per_generation}: more than the "
                f"{n_train} evolution classes of classes={self.classes!r}"
            )

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        return parse_classes(self.classes)


# --------------------------------------------------------------------------- finding


def _tfds_default_dir() -> pathlib.Path:
    env = os.environ.get("TFDS_DATA_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / "tensorflow_datasets"


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
        looked_at.append(_tfds_default_dir())
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


def decode_image(data: bytes, size: int) -> np.ndarray:
    """JPEG (or any Pillow image) bytes -> u8[size, size, 3]: the shorter side resized to
    ``size`` (bicubic), then the centre ``size x size`` crop.

    Pillow's JPEG draft mode first decodes at the smallest power-of-two reduction whose
    sides stay at least ``size``, which is faster and filters no worse.
    """
    from PIL import Image  # noqa: PLC0415 (only the readers need Pillow)

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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
        with tqdm(
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
            max_workers=threads or _default_threads(),
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


# --------------------------------------------------------------------------- the split


def class_split(
    present: np.ndarray, sizes: tuple[int, int, int], *, where: str = "the data"
) -> dict[str, np.ndarray]:
    """``{'train', 'val', 'test'}``: label ids of each split (see the module docstring).

    Args:
      present: the label ids present, any order.
      sizes: the train, val and test counts.
      where: names the data in the error.

    Raises:
      DataError: fewer classes than the split needs.
    """
    present = np.unique(np.asarray(present, np.int64))
    n_train, n_val, n_test = sizes
    need = n_train + n_val + n_test
    if present.size < need:
        raise DataError(
            f"{where} has {present.size} classes; config field data.classes="
            f"{n_train},{n_val},{n_test} needs {need} (evolution, critics, downstream)"
        )
    ordered = present[np.random.default_rng(SPLIT_SEED).permutation(present.size)]
    return {
        "test": ordered[:n_test],
        "val": ordered[n_test : n_test + n_val],
        "train": ordered[n_test + n_val : need],
    }


def _rng(seed: int, stream: int, generation: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream, int(generation)])


def _draw(
    rng: np.random.Generator, index: ClassIndex, classes: np.ndarray, per_class: int
) -> np.ndarray:
    """i64[C, per_class]: distinct record positions of each class."""
    return np.stack(
        [rng.choice(index.positions(int(c)), per_class, replace=False) for c in classes]
    )


class ImageNetSampler:
    """The pools of a prepared ImageNet-1K folder, generation by generation.

    Args:
      data_dir: see ``find_prepared``.
      options: the pools' sizes, the class split and the run's seed.
      cache_dir: where the label index and the fixed pools are cached (default
        ``$GTL_CACHE_DIR`` or ``~/.cache/gtl_jax``).
      threads: JPEG decoding threads (0: one per core).

    Raises:
      DataError: no prepared folder, too few classes for the split, or too few images in a
        class for the pools (each one line naming the config field).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None,
        options: Options,
        *,
        cache_dir: str | os.PathLike | None = None,
        threads: int = 0,
    ):
        self.options, self.cache_dir, self.threads = options, cache_dir, threads
        self.data = PreparedImageNet(find_prepared(data_dir))
        labels = load_labels(self.data, cache_dir)
        num_labels = len(self.data.class_names)
        self.index = {s: ClassIndex.of(labels[s], num_labels) for s in TFDS_SPLITS}
        present = np.flatnonzero(np.bincount(labels["train"], minlength=num_labels))
        where = f"{TFDS_NAME} in {self.data.folder} (train split)"
        self.split = class_split(present, options.split_sizes, where=where)
        o = options
        for split, tfds_split, field, per_class in (
            ("train", "train", "images_per_class", o.images_per_class),
            ("val", "train", "eval_images_per_class", o.eval_images_per_class),
            ("test", "validation", "eval_images_per_class", o.eval_images_per_class),
        ):
            counts = [self.index[tfds_split].count(int(c)) for c in self.split[split]]
            fewest = int(np.argmin(counts))
            if counts[fewest] < per_class:
                name = self.data.class_names[int(self.split[split][fewest])]
                raise DataError(
                    f"{TFDS_NAME} in {self.data.folder}: class {name} of the {split} "
                    f"split has {counts[fewest]} {tfds_split} images; config field "
                    f"data.{field}={per_class} needs that many in every class"
                )

    def _names(self, labels: np.ndarray) -> tuple[str, ...]:
        return tuple(self.data.class_names[int(c)] for c in labels)

    def _pool(self, tfds_split: str, positions: np.ndarray, classes) -> ClassPool:
        images = self.data.images(
            tfds_split, positions, self.options.image_size, threads=self.threads
        )
        return ClassPool(images=images, class_names=self._names(classes))

    def train_pool(self, generation: int) -> ClassPool:
        """Generation g's lifetime pool: u8[classes_per_generation, images_per_class, S,
        S, 3], drawn from ``(seed, g)`` (the same every time)."""
        o = self.options
        rng = _rng(o.seed, _TRAIN_STREAM, generation)
        classes = rng.choice(
            self.split["train"], o.classes_per_generation, replace=False
        )
        positions = _draw(rng, self.index["train"], classes, o.images_per_class)
        return self._pool("train", positions, classes)

    def val_pool(self) -> ClassPool:
        """The critics' pool: every val class, ``eval_images_per_class`` images, from
        ``seed``."""
        o = self.options
        classes = self.split["val"]
        rng = _rng(o.seed, _VAL_STREAM)
        positions = _draw(rng, self.index["train"], classes, o.eval_images_per_class)
        return self._pool("train", positions, classes)

    def test_pool(self) -> ClassPool:
        """The downstream pool: every test class, ``eval_images_per_class`` images of the
        validation split, drawn with a fixed key (the same for every seed)."""
        classes = self.split["test"]
        rng = _rng(SPLIT_SEED, _TEST_STREAM)
        positions = _draw(
            rng,
            self.index["validation"],
            classes,
            self.options.eval_images_per_class,
        )
        return self._pool("validation", positions, classes)

    def pools(self) -> dict[str, ClassPool]:
        """``{'train': generation 0's, 'val', 'test'}``, cached on disk (one ``.npz`` named
        by the options and the identity of the files), so the commands that load the data
        again (the final table, inherit) decode nothing."""
        o = self.options
        parts = (NAME, SPLIT_SEED, *dataclasses.astuple(o))
        key = cache_key(parts, self.data.files)
        return cached_pools(
            cache_path(self.cache_dir, NAME, o.image_size, key),
            lambda: {
                "train": self.train_pool(0),
                "val": self.val_pool(),
                "test": self.test_pool(),
            },
        )

    def generation(self, generation: int) -> dict[str, ClassPool]:
        """The pools that change at generation g: ``{'train': ...}`` (generation 0's from
        the cache of ``pools``)."""
        if generation == 0:
            return {"train": self.pools()["train"]}
        return {"train": self.train_pool(generation)}


def load_imagenet(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    cache_dir: str | os.PathLike | None = None,
    classes: str = CLASSES,
    classes_per_generation: int = CLASSES_PER_GENERATION,
    images_per_class: int = IMAGES_PER_CLASS,
    eval_images_per_class: int = EVAL_IMAGES_PER_CLASS,
    seed: int = 0,
) -> dict[str, ClassPool]:
    """Loads ImageNet-1K's pools: ``{'train': generation 0's lifetime pool, 'val': the
    critics', 'test': the downstream classes'}`` (numpy ``ClassPool``s named by WordNet id;
    see the module docstring for what each holds).

    Args:
      data_dir: a tfds data dir (or its ``imagenet2012/`` or version folder); searched for
        if None (``$GTL_DATA_DIR``, ``../shared/data/imagenet``, ``$TFDS_DATA_DIR``,
        ``~/tensorflow_datasets``).
      image_size: S, the side of the square images.
      cache_dir: where the index and pools are cached.
      classes: the train,val,test class counts (``"800,100,100"``).
      classes_per_generation, images_per_class: the size of a generation's train pool.
      eval_images_per_class: images per class of the val and test pools.
      seed: the run's seed (the train and val pools' draws).

    Raises:
      DataError: see ``ImageNetSampler``.
      ValueError: an impossible option.
    """
    options = Options(
        image_size=image_size,
        classes=classes,
        classes_per_generation=classes_per_generation,
        images_per_class=images_per_class,
        eval_images_per_class=eval_images_per_class,
        seed=seed,
    )
    return ImageNetSampler(data_dir, options, cache_dir=cache_dir).pools()


def imagenet_stream(
    data_dir: str | os.PathLike | None = None,
    *,
    generations: int,
    image_size: int = IMAGE_SIZE,
    cache_dir: str | os.PathLike | None = None,
    threads: int = 0,
    **options,
):
    """A ``PoolStream`` of the generations' changing pools (``{'train': ClassPool}``),
    prefetching generation g + 1 while g trains; ``options`` as ``load_imagenet``'s."""
    sampler = ImageNetSampler(
        data_dir,
        Options(image_size=image_size, **options),
        cache_dir=cache_dir,
        threads=threads,
    )
    return PoolStream(sampler.generation, stop=generations, name="gtl-imagenet")
