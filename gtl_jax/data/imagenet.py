"""ImageNet-1K (ILSVRC 2012) as class pools streamed generation by generation.

This module owns the sampling: the class split, which records make each pool, the
pools' cache and the generation stream. The source is the tensorflow-datasets
``imagenet2012`` builder prepared from the user's manual download into array_record files,
read without TensorFlow by ``imagenet_tfds.py`` (records, labels, the per-class index);
``imagenet_decode.py`` turns their JPEGs into arrays with Pillow. The names of both stay
importable from here. A shell module (I/O, threads, no jit).

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

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from gtl_jax.data.arrays import check_image_size
from gtl_jax.data.files import cache_key, cache_path, cached_pools

# Re-exported (``name as name``): the reading and decoding names imported from here.
from gtl_jax.data.imagenet_decode import decode_image as decode_image
from gtl_jax.data.imagenet_tfds import HOW_TO_PREPARE as HOW_TO_PREPARE
from gtl_jax.data.imagenet_tfds import NAME as NAME
from gtl_jax.data.imagenet_tfds import TFDS_NAME as TFDS_NAME
from gtl_jax.data.imagenet_tfds import TFDS_SPLITS as TFDS_SPLITS
from gtl_jax.data.imagenet_tfds import ClassIndex as ClassIndex
from gtl_jax.data.imagenet_tfds import PreparedImageNet as PreparedImageNet
from gtl_jax.data.imagenet_tfds import find_prepared as find_prepared
from gtl_jax.data.imagenet_tfds import index_path as index_path
from gtl_jax.data.imagenet_tfds import load_labels as load_labels
from gtl_jax.data.imagenet_tfds import parse_record as parse_record
from gtl_jax.data.imagenet_tfds import prepared_folder as prepared_folder
from gtl_jax.data.pool import ClassPool, DataError
from gtl_jax.data.stream import PoolStream

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
