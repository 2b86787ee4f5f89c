"""The ImageNet-1K reader on a tiny synthetic imagenet2012 in the exact tfds prepared format
(array_record files of tf.Example protos, dataset_info.json, features.json), written and
read without TensorFlow: the pools, the class split, the label index and its cache, the
streamed generation pools and their prefetch thread, and the errors."""

from __future__ import annotations

import io
import sys
import threading

import numpy as np
import pytest
from synthetic_data import IMAGENET_LABELS, imagenet_color, write_imagenet2012

from gtl_jax.data import DATASETS, STREAMS, DataError, PoolStream, imagenet
from gtl_jax.data.imagenet import (
    ImageNetSampler,
    Options,
    class_split,
    decode_image,
    find_prepared,
    load_imagenet,
)

# The smoke config's sizes: 6 evolution, 5 critic, 5 downstream classes of the 16 written.
SMALL = {
    "classes": "6,5,5",
    "classes_per_generation": 4,
    "images_per_class": 4,
    "eval_images_per_class": 3,
}
SIZE = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    write_imagenet2012(folder, train_per_class=6, validation_per_class=4)
    return folder


@pytest.fixture(scope="module")
def sampler(data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return ImageNetSampler(data_dir, Options(image_size=SIZE, **SMALL), cache_dir=cache)


def _wnids(sampler):
    return [sampler.data.class_names[label] for label in IMAGENET_LABELS]


def _codes(pool, channel):
    """The flat colour channel of every image: u8[C, M] (JPEG keeps them to +-3)."""
    return np.rint(pool.images[..., channel].astype(np.float64).mean(axis=(2, 3)))


def _check_colours(pool, wnids, split):
    # Red codes the class, blue the tfds split the image came from, green the image: the
    # images of a class are that class's and distinct.
    for c, name in enumerate(pool.class_names):
        expected = imagenet_color(wnids.index(name), 0, split)
        np.testing.assert_allclose(_codes(pool, 0)[c], expected[0], atol=3)
        np.testing.assert_allclose(_codes(pool, 2)[c], expected[2], atol=3)
        greens = _codes(pool, 1)[c]
        assert len(set(np.rint((greens - 8) / 10).astype(int))) == pool.images.shape[1]


def test_registered():
    assert DATASETS["imagenet"] is load_imagenet
    assert STREAMS["imagenet"] is imagenet.imagenet_stream


def test_the_synthetic_folder_is_the_tfds_prepared_format(data_dir):
    folder = find_prepared(data_dir)
    assert folder == data_dir / "imagenet2012" / "5.1.0"
    names = sorted(p.name for p in folder.iterdir())
    assert "dataset_info.json" in names and "features.json" in names
    for split in ("train", "validation"):
        assert f"imagenet2012-{split}.array_record-00000-of-00002" in names
    # The tfds reader decodes it as the real one (its own data source, PIL decoding).
    import tensorflow_datasets as tfds

    source = tfds.data_source(
        "imagenet2012", split="validation", data_dir=str(data_dir)
    )
    example = source[0]
    assert set(example) == {"image", "label", "file_name"}
    assert example["image"].dtype == np.uint8 and example["image"].shape[-1] == 3
    assert int(example["label"]) in IMAGENET_LABELS
    # Also found from its imagenet2012/ folder and from the version folder itself.
    assert find_prepared(data_dir / "imagenet2012") == folder
    assert find_prepared(folder) == folder


def test_pools_hold_the_split_classes_decoded_without_tensorflow(data_dir, tmp_path):
    pools = load_imagenet(data_dir, image_size=SIZE, cache_dir=tmp_path, **SMALL)
    assert "tensorflow" not in sys.modules  # tfds reads array_record without it
    shapes = {s: p.images.shape for s, p in pools.items()}
    assert shapes == {
        "train": (4, 4, SIZE, SIZE, 3),
        "val": (5, 3, SIZE, SIZE, 3),
        "test": (5, 3, SIZE, SIZE, 3),
    }
    assert all(p.images.dtype == np.uint8 for p in pools.values())
    options = Options(image_size=SIZE, **SMALL)
    sampler = ImageNetSampler(data_dir, options, cache_dir=tmp_path)
    wnids = _wnids(sampler)
    # Class names are the WordNet ids of the labels, each pool's within its split.
    split = {
        s: {sampler.data.class_names[c] for c in v} for s, v in sampler.split.items()
    }
    assert set(pools["train"].class_names) <= split["train"]
    assert set(pools["val"].class_names) == split["val"]
    assert set(pools["test"].class_names) == split["test"]
    # Train and val pools come from the train split, test from the validation split.
    _check_colours(pools["train"], wnids, "train")
    _check_colours(pools["val"], wnids, "train")
    _check_colours(pools["test"], wnids, "validation")


def test_class_split_rule():
    present = np.asarray(IMAGENET_LABELS)
    split = class_split(present, (6, 5, 5))
    ordered = present[np.random.default_rng(imagenet.SPLIT_SEED).permutation(16)]
    assert list(split["test"]) == list(ordered[:5])
    assert list(split["val"]) == list(ordered[5:10])
    assert list(split["train"]) == list(ordered[10:16])
    # Fewer evolution classes move no critic or downstream class.
    fewer = class_split(present, (3, 5, 5))
    assert list(fewer["test"]) == list(split["test"])
    assert list(fewer["val"]) == list(split["val"])
    # The real data: 800/100/100 of the 1000, disjoint.
    full = class_split(np.arange(1000), imagenet.parse_classes(imagenet.CLASSES))
    assert [len(full[s]) for s in ("train", "val", "test")] == [800, 100, 100]
    assert len(set(np.concatenate(list(full.values())))) == 1000


def test_label_index_is_built_once_and_cached(data_dir, tmp_path, monkeypatch):
    first = ImageNetSampler(
        data_dir, Options(image_size=SIZE, **SMALL), cache_dir=tmp_path
    )
    assert len(list(tmp_path.glob("imagenet_*_index_*.npz"))) == 1
    counts = [first.index["train"].count(label) for label in IMAGENET_LABELS]
    assert counts == [6] * 16
    assert [first.index["validation"].count(label) for label in IMAGENET_LABELS] == [
        4
    ] * 16

    def fail(*args, **kwargs):
        raise AssertionError("the labels were read again")

    monkeypatch.setattr(imagenet.PreparedImageNet, "labels", fail)
    again = ImageNetSampler(
        data_dir, Options(image_size=SIZE, **SMALL), cache_dir=tmp_path
    )
    for split in ("train", "validation"):
        np.testing.assert_array_equal(
            again.index[split].order, first.index[split].order
        )


def test_generation_pools_are_deterministic_fixed_in_shape_and_change(sampler):
    first = sampler.train_pool(1)
    again = sampler.train_pool(1)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.class_names == again.class_names
    pools = [sampler.train_pool(g) for g in range(4)]
    assert {p.images.shape for p in pools} == {(4, 4, SIZE, SIZE, 3)}
    # Another generation draws other classes or images.
    for g in range(1, 4):
        assert pools[g].class_names != pools[0].class_names or not np.array_equal(
            pools[g].images, pools[0].images
        )
    # Generation 0's is the loader's; another seed draws another pool.
    np.testing.assert_array_equal(
        sampler.generation(0)["train"].images, sampler.pools()["train"].images
    )
    other = ImageNetSampler(
        sampler.data.folder,
        Options(image_size=SIZE, seed=1, **SMALL),
        cache_dir=sampler.cache_dir,
    )
    assert other.train_pool(1).class_names != first.class_names or not np.array_equal(
        other.train_pool(1).images, first.images
    )
    # The val and test pools do not change with the generation.
    assert set(other.pools()["test"].class_names) == set(
        sampler.pools()["test"].class_names
    )


def _stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gtl-")]


def test_stream_prefetches_the_next_generation_then_joins(data_dir, sampler):
    calls = []
    started = threading.Event()

    def fetch(g):
        calls.append((g, threading.current_thread().name))
        started.set()
        return g * 10

    with PoolStream(fetch, stop=3, name="gtl-test") as stream:
        assert stream.get(0) == 0
        assert started.wait(5)  # generation 1 is being prepared in the background
        assert stream.get(1) == 10
        assert stream.get(2) == 20  # the last: nothing prepared after it
        assert stream.get(0) == 0  # out of order (a resume): computed, not prefetched
    # Generation 1, prepared again after the last get, may be cancelled by the close.
    assert [g for g, _ in calls] in ([0, 1, 2, 0], [0, 1, 2, 0, 1])
    assert all(name.startswith("gtl-test") for _, name in calls)
    assert _stream_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        stream.get(1)

    # The ImageNet stream: the sampler's generation pools, in a thread that ends with it.
    options = {"image_size": SIZE, "cache_dir": sampler.cache_dir, **SMALL}
    with imagenet.imagenet_stream(data_dir, generations=3, **options) as stream:
        for g in range(3):
            np.testing.assert_array_equal(
                stream.get(g)["train"].images, sampler.train_pool(g).images
            )
        assert any(t.name.startswith("gtl-imagenet") for t in threading.enumerate())
    assert _stream_threads() == []


def test_stream_error_surfaces_in_get_and_the_thread_ends():
    def fetch(g):
        if g == 1:
            raise DataError("record 3 cannot be read")
        return g

    with PoolStream(fetch, stop=5) as stream:
        assert stream.get(0) == 0
        with pytest.raises(DataError, match="record 3"):
            stream.get(1)
    assert _stream_threads() == []


def test_decode_resizes_the_shorter_side_and_crops_the_centre():
    from PIL import Image

    pixels = np.zeros((30, 60, 3), np.uint8)
    pixels[:, :20] = (250, 0, 0)
    pixels[:, 20:40] = (0, 250, 0)
    pixels[:, 40:] = (0, 0, 250)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue(), 10)
    assert image.shape == (10, 10, 3) and image.dtype == np.uint8
    # 30x60 -> 10x20, centre columns 5-15: green in the middle, the sides' edges at the
    # crop's borders.
    np.testing.assert_allclose(image[5, 4], (0, 250, 0), atol=8)
    assert image[5, 0, 0] > 100 and image[5, 9, 2] > 100


# --------------------------------------------------------------------------- errors


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_missing_folder_says_where_it_looked_and_how_to_prepare(tmp_path):
    with pytest.raises(DataError) as e:
        load_imagenet(tmp_path / "nowhere", cache_dir=tmp_path)
    text = _one_line(e)
    assert str(tmp_path / "nowhere") in text
    assert "tfds build imagenet2012 --manual_dir=" in text


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"classes": "10,4,4"},
            "has 16 classes; config field data.classes=10,4,4 needs 18",
        ),
        ({"images_per_class": 7}, "train images; config field data.images_per_class=7"),
        (
            {"eval_images_per_class": 5},
            "validation images; config field data.eval_images_per_class=5",
        ),
    ],
)
def test_too_few_classes_or_images_name_the_field(data_dir, tmp_path, change, message):
    with pytest.raises(DataError) as e:
        load_imagenet(data_dir, image_size=SIZE, cache_dir=tmp_path, **(SMALL | change))
    assert message in _one_line(e)


def test_impossible_options_name_the_field():
    with pytest.raises(ValueError, match="classes='800,100': must be three"):
        Options(classes="800,100")
    with pytest.raises(
        ValueError, match="classes_per_generation=900: more than the 800"
    ):
        Options(classes_per_generation=900)
    with pytest.raises(ValueError, match="images_per_class=0"):
        Options(images_per_class=0)


def test_a_corrupt_record_is_a_clear_error(data_dir, tmp_path):
    folder = find_prepared(data_dir)
    broken = tmp_path / "tfds"
    (broken / "imagenet2012").mkdir(parents=True)
    copy = broken / "imagenet2012" / "5.1.0"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    shard = copy / "imagenet2012-validation.array_record-00001-of-00002"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError) as e:
        load_imagenet(broken, image_size=SIZE, cache_dir=tmp_path / "cache", **SMALL)
    text = str(e.value)
    assert "imagenet2012 validation records" in text and str(copy) in text
