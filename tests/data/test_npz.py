"""User class pools from an .npz: split files, split arrays, resizing, and every error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gtl_jax.data import DATASETS, DataError, load_dataset
from gtl_jax.data.npz import load_npz, parse_split_spec


def _write(
    tmp_path, *, classes=10, per_class=3, size=8, channels=3, split=None, **arrays
):
    rng = np.random.default_rng(0)
    shape = (classes, per_class, size, size) + ((channels,) if channels else ())
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "mydata.npz"
    np.savez(path, images=images, **arrays)
    if split is not None:
        (tmp_path / "mydata_splits.txt").write_text(split)
    return path, images


SPLIT = "# a comment\ntrain: 0-5\nval: 6, 7\ntest: 9 8\n"


def test_split_file_with_ranges(tmp_path):
    path, images = _write(tmp_path, split=SPLIT)
    pools = load_npz(path)
    assert DATASETS["npz"] is load_npz
    assert [pools[s].num_classes for s in ("train", "val", "test")] == [6, 2, 2]
    assert pools["test"].class_names == ("9", "8")
    np.testing.assert_array_equal(pools["train"].images, images[:6])
    np.testing.assert_array_equal(pools["test"].images[0], images[9])
    assert pools["val"].images.shape == (2, 3, 8, 8, 3)


def test_class_names_grey_images_and_folder(tmp_path):
    names = np.array([f"class_{i}" for i in range(10)])
    split = "train: 0-7\nval: class_8\ntest: class_9\n"
    _, images = _write(tmp_path, channels=0, split=split, class_names=names)
    pools = load_dataset("npz", tmp_path)  # a folder holding one .npz
    assert pools["val"].class_names == ("class_8",)
    assert pools["test"].images.shape == (1, 3, 8, 8, 1)
    np.testing.assert_array_equal(pools["test"].images[0, ..., 0], images[9])


def test_split_arrays_in_the_file_and_the_file_wins(tmp_path):
    arrays = {
        "train_classes": np.arange(5),
        "val_classes": np.array([5, 6]),
        "test_classes": np.array([7, 8, 9]),
    }
    path, images = _write(tmp_path, **arrays)
    pools = load_npz(path)
    assert [pools[s].num_classes for s in ("train", "val", "test")] == [5, 2, 3]
    np.testing.assert_array_equal(pools["val"].images, images[5:7])
    (tmp_path / "mydata_splits.txt").write_text(SPLIT)
    assert load_npz(path)["train"].num_classes == 6


def test_resized_and_cached(tmp_path):
    path, images = _write(tmp_path, split=SPLIT)
    cache = tmp_path / "cache"
    pools = load_npz(path, image_size=4, cache_dir=cache)
    assert pools["train"].images.shape == (6, 3, 4, 4, 3)
    expected = images[0, 0].astype(np.float64).reshape(4, 2, 4, 2, 3).mean((1, 3))
    np.testing.assert_allclose(pools["train"].images[0, 0], np.rint(expected), atol=1)
    assert len(list(cache.glob("npz_*.npz"))) == 1
    # The file's own size is used as is, without a cache.
    assert load_npz(path, image_size=8, cache_dir=tmp_path / "other")[
        "val"
    ].image_shape == (8, 8, 3)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: 0-5\nval:\ntest: 9\n", r"split\(s\) \['val'\] are empty"),
        ("# only a comment\n", "no split lists any class"),
        ("train: 0-5\nval: 5\ntest: 9\n", "class 5 is in both 'train' and 'val'"),
        ("train: 0-5\nval: 6\ntest: 10\n", r"index 10 of 'test' is outside \[0, 10\)"),
        ("train: 0-5\nval: 6\ntest: cat\n", "'cat' is not a class index or name"),
        ("train: 0-5\nvalid: 6\ntest: 9\n", "expected 'train: ...'"),
        ("train: 0-5\nval: 7-6\ntest: 9\n", "empty range"),
    ],
)
def test_bad_split_file(tmp_path, text, message):
    path, _ = _write(tmp_path, split=text)
    with pytest.raises(DataError, match=message) as e:
        load_npz(path)
    assert "mydata_splits.txt" in str(e.value)


def test_splits_not_listed_are_absent(tmp_path):
    """A file may list only the splits a command uses (python -m gtl_jax.inherit with
    learngene and scratch needs only test): the pools are those listed, also when resized
    and read back from the cache."""
    path, images = _write(tmp_path, split="test: 0-9\n")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # the cache of a partial split is not "unreadable"
        for pools in (
            load_npz(path),
            load_npz(path, image_size=4, cache_dir=tmp_path / "cache"),
            load_npz(path, image_size=4, cache_dir=tmp_path / "cache"),  # the cache
        ):
            assert list(pools) == ["test"] and pools["test"].num_classes == 10
    np.testing.assert_array_equal(load_npz(path)["test"].images, images)
    path, _ = _write(tmp_path, split="train: 0-7\nval: 8-9\n")
    assert list(load_npz(path)) == ["train", "val"]


def test_parse_split_spec_names_and_ranges():
    names = tuple("abcdef")
    rows = parse_split_spec("train: 0-2\nval: d\ntest: f, e", names, source="s")
    assert [r.tolist() for r in rows.values()] == [[0, 1, 2], [3], [5, 4]]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"pictures": np.zeros((3, 2, 4, 4), np.uint8)}, r"no array 'images'"),
        (  # the shape as given (not with the channel axis added), and how to convert
            {"images": np.zeros((3, 2, 4, 4), np.float32)},
            r"dtype float32 and shape \(3, 2, 4, 4\); expected uint8 .*"
            r"convert float images in \[0, 1\] with \(images \* 255\)",
        ),
        ({"images": np.zeros((3, 4, 4), np.uint8)}, r"shape \(3, 4, 4\)"),
        (
            {
                "images": np.zeros((3, 2, 4, 4), np.uint8),
                "class_names": np.array(["a", "b"]),
            },
            "'class_names' holds 2 names",
        ),
        ({"images": np.zeros((3, 2, 4, 4), np.uint8)}, "no split"),
    ],
)
def test_bad_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_npz(path)
    assert str(path) in str(e.value)


def test_truncated_missing_and_ambiguous(tmp_path):
    path, _ = _write(tmp_path, split=SPLIT)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot be read as an .npz") as e:
        load_npz(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nothing.npz")
    with pytest.raises(DataError, match="needs --config.data.data_dir"):
        load_npz(None)
    np.savez(tmp_path / "second.npz", images=np.zeros((3, 1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="holds 2 .npz files"):
        load_npz(tmp_path)
