"""Small synthetic files in the exact formats of the real CIFAR-FS and miniImageNet sources.

Real keys, dtypes, layouts and file names; few images per class. Each writer returns the images
it wrote, ``{class name: u8[M, H, W, 3]}`` in file order, so tests can compare the loaded pools
pixel by pixel. Images are random (seeded), so a wrong transpose or a class mix-up shows.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile

import numpy as np

from gtl_jax.data import cifar_fs, mini_imagenet


def _images(rng, classes, per_class, size):
    return {
        c: rng.integers(0, 256, (per_class, size, size, 3), dtype=np.uint8)
        for c in classes
    }


def _shuffled(rng, images: dict, label_of):
    """Flattens ``{class: images}`` into a shuffled (images, labels) pair; keeps class order."""
    rows = [(c, j) for c in images for j in range(len(images[c]))]
    order = rng.permutation(len(rows))
    # Within a class the file order must stay j = 0, 1, ...: sort each class's rows.
    placed = [rows[i] for i in order]
    slots = {c: iter(range(len(images[c]))) for c in images}
    placed = [(c, next(slots[c])) for c, _ in placed]
    x = np.stack([images[c][j] for c, j in placed])
    y = [label_of(c) for c, _ in placed]
    return x, y


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar_fs_pickles(directory, *, per_class=4, seed=0):
    """``CIFAR_FS_{train,val,test}.pickle``: {'data': u8[N,32,32,3], 'labels': fine label ints}."""
    rng = np.random.default_rng(seed)
    lists = cifar_fs.split_lists()
    names = cifar_fs.fine_label_names(lists)
    written = {}
    for split, classes in lists.items():
        images = _images(rng, classes, per_class, 32)
        x, y = _shuffled(rng, images, names.index)
        _dump(directory / f"CIFAR_FS_{split}.pickle", {"data": x, "labels": y})
        written.update(images)
    return written


def cifar100_python_members(*, train_per_class=3, test_per_class=1, seed=0):
    """The ``train``, ``test`` and ``meta`` pickles of the CIFAR-100 python version, as bytes.

    Keys are ``bytes`` as in the official Python 2 pickles; ``data`` is u8[N, 3072], each row
    the red, green and blue 32x32 planes.
    """
    rng = np.random.default_rng(seed)
    names = cifar_fs.fine_label_names()
    written = {c: [] for c in names}
    members = {}
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        images = _images(rng, names, per_class, 32)
        x, y = _shuffled(rng, images, names.index)
        flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        obj = {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(x))],
            b"fine_labels": y,
            b"coarse_labels": [0] * len(x),
            b"data": flat,
        }
        buffer = io.BytesIO()
        pickle.dump(obj, buffer, protocol=2)
        members[part] = buffer.getvalue()
        for c in names:
            written[c].append(images[c])
    buffer = io.BytesIO()
    pickle.dump(
        {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []},
        buffer,
        protocol=2,
    )
    members["meta"] = buffer.getvalue()
    # Train then test: the loader merges them in this order.
    return members, {c: np.concatenate(v) for c, v in written.items()}


def write_cifar100_archive(directory, **kwargs):
    """``cifar-100-python.tar.gz`` with ``cifar-100-python/{train,test,meta}``."""
    members, written = cifar100_python_members(**kwargs)
    with tarfile.open(directory / "cifar-100-python.tar.gz", "w:gz") as tar:
        for part, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{part}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return written


def write_cifar100_folder(directory, **kwargs):
    """The extracted folder ``cifar-100-python/`` with ``train``, ``test`` and ``meta``."""
    members, written = cifar100_python_members(**kwargs)
    folder = directory / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for part, data in members.items():
        (folder / part).write_bytes(data)
    return written


def write_mini_imagenet_cache(
    directory, *, per_class=4, seed=0, size=84, val_name="val"
):
    """``mini-imagenet-cache-{train,val,test}.pkl``: {'image_data', 'class_dict'}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, classes in mini_imagenet.split_lists().items():
        images = _images(rng, classes, per_class, size)
        x, y = _shuffled(rng, images, lambda c: c)
        class_dict = {
            c: [i for i, label in enumerate(y) if label == c] for c in classes
        }
        name = val_name if split == "val" else split
        _dump(
            directory / f"mini-imagenet-cache-{name}.pkl",
            {"image_data": x, "class_dict": class_dict},
        )
        written.update(images)
    return written


def write_mini_imagenet_metaoptnet(directory, *, per_class=4, seed=0):
    """``miniImageNet_category_split_*.pickle``: {'data', 'labels', 'catname2label'}."""
    rng = np.random.default_rng(seed)
    written = {}
    offset = 0
    for split, classes in mini_imagenet.split_lists().items():
        images = _images(rng, classes, per_class, 84)
        catname2label = {c: offset + i for i, c in enumerate(classes)}
        offset += len(classes)
        x, y = _shuffled(rng, images, catname2label.__getitem__)
        _dump(
            directory / mini_imagenet.METAOPTNET_FILES[split],
            {"data": x, "labels": y, "catname2label": catname2label},
        )
        written.update(images)
    return written


# --------------------------------------------------------------------------- ImageNet-1K

# The label ids of the synthetic imagenet2012's classes: 16 of the 1000, spread out.
IMAGENET_LABELS = tuple(range(3, 1000, 63))


def imagenet_color(label_index: int, j: int, split: str) -> tuple[int, int, int]:
    """The colour of image ``j`` of the ``label_index``-th synthetic class in a split: red
    codes the class, green the image, blue the split (JPEG keeps flat colours to +-3)."""
    return (8 + 15 * label_index, 8 + 10 * j, 200 if split == "train" else 60)


def write_imagenet2012(
    data_dir,
    *,
    labels=IMAGENET_LABELS,
    train_per_class=6,
    validation_per_class=4,
    shards=2,
    seed=0,
):
    """A prepared tensorflow-datasets ``imagenet2012`` (version 5.1.0) in
    ``data_dir/imagenet2012/5.1.0/``, as ``tfds build imagenet2012 --file_format=array_record``
    writes it, without TensorFlow: the builder's own ``dataset_info.json``, ``features.json``
    and ``label.labels.txt`` (its 1000 WordNet ids), and ``imagenet2012-{train,validation}``
    array_record shards of serialized ``tf.train.Example``s (``image`` JPEG bytes, ``label``
    int64, ``file_name``), shuffled across classes. Images are flat colours
    (``imagenet_color``) of varied sizes and aspect ratios.

    Returns the version folder.
    """
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module
    from PIL import Image

    rng = np.random.default_rng(seed)
    builder = tfds.builder(
        "imagenet2012", data_dir=str(data_dir), file_format="array_record"
    )
    folder = pathlib.Path(builder.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    features = builder.info.features
    wnids = features["label"].names
    infos = []
    for split, per_class in (
        ("train", train_per_class),
        ("validation", validation_per_class),
    ):
        examples = []
        for i, label in enumerate(labels):
            for j in range(per_class):
                height, width = (int(v) for v in rng.integers(24, 64, 2))
                pixels = np.empty((height, width, 3), np.uint8)
                pixels[:] = imagenet_color(i, j, split)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
                name = (
                    f"{wnids[label]}_{j}.JPEG"
                    if split == "train"
                    else f"ILSVRC2012_val_{len(examples) + 1:08d}.JPEG"
                )
                examples.append(
                    features.serialize_example(
                        {
                            "image": io.BytesIO(buffer.getvalue()),
                            "label": label,
                            "file_name": name,
                        }
                    )
                )
        examples = [examples[k] for k in rng.permutation(len(examples))]
        bounds = np.linspace(0, len(examples), shards + 1).astype(int)
        for k in range(shards):
            path = folder / f"imagenet2012-{split}.array_record-{k:05d}-of-{shards:05d}"
            writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
            for record in examples[bounds[k] : bounds[k + 1]]:
                writer.write(record)
            writer.close()
        infos.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=[int(b - a) for a, b in zip(bounds[:-1], bounds[1:])],
                num_bytes=sum(len(e) for e in examples),
                filename_template=tfds.core.ShardedFileTemplate(
                    data_dir=str(folder),
                    dataset_name="imagenet2012",
                    split=split,
                    filetype_suffix="array_record",
                ),
            )
        )
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(str(folder))
    return folder
