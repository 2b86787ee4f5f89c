"""The miniImageNet loader on small synthetic files in both real formats, and its errors."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from synthetic_data import write_mini_imagenet_cache, write_mini_imagenet_metaoptnet

from gtl_jax.data import DATASETS, DataError, load_dataset, mini_imagenet
from gtl_jax.data.mini_imagenet import load_mini_imagenet

SIZES = {"train": 64, "val": 16, "test": 20}


def _check_pools(pools, written, per_class, size=84):
    lists = mini_imagenet.split_lists()
    assert set(pools) == {"train", "val", "test"}
    for split, pool in pools.items():
        assert pool.class_names == tuple(lists[split])
        assert pool.images.shape == (SIZES[split], per_class, size, size, 3)
        assert pool.images.dtype == np.uint8
        if size == 84:
            for i, name in enumerate(pool.class_names):
                np.testing.assert_array_equal(pool.images[i], written[name])


def test_split_is_ravi_larochelle_64_16_20():
    lists = mini_imagenet.split_lists()
    assert {s: len(v) for s, v in lists.items()} == SIZES
    every = [w for names in lists.values() for w in names]
    assert len(set(every)) == 100
    assert all(re.fullmatch(r"n\d{8}", w) for w in every)
    assert "n01532829" in lists["train"]  # house finch
    assert "n01855672" in lists["val"]  # goose
    assert "n01930112" in lists["test"]  # nematode
    assert DATASETS["mini_imagenet"] is load_mini_imagenet


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_cache_pickles(tmp_path, val_name):
    written = write_mini_imagenet_cache(tmp_path, per_class=3, val_name=val_name)
    pools = load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=3)
    assert len(list((tmp_path / "cache").glob("mini_imagenet_*.npz"))) == 1


def test_metaoptnet_pickles(tmp_path):
    written = write_mini_imagenet_metaoptnet(tmp_path, per_class=2)
    pools = load_dataset("mini_imagenet", tmp_path, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=2)


def test_subfolder_and_resize(tmp_path):
    folder = tmp_path / "mini_imagenet"
    folder.mkdir()
    written = write_mini_imagenet_cache(folder, per_class=1)
    pools = load_mini_imagenet(tmp_path, image_size=42, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=1, size=42)
    first = written[pools["test"].class_names[0]][0].astype(np.float64)
    expected = first.reshape(42, 2, 42, 2, 3).mean((1, 3))
    np.testing.assert_allclose(pools["test"].images[0, 0], np.rint(expected), atol=1)


# --- errors ---------------------------------------------------------------------


def _rewrite(path, edit):
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    with open(path, "wb") as f:
        pickle.dump(edit(obj), f, protocol=2)


def _drop_class(obj):
    wnid = sorted(obj["class_dict"])[0]
    keep = np.setdiff1d(np.arange(len(obj["image_data"])), obj["class_dict"][wnid])
    new_row = {old: new for new, old in enumerate(keep)}
    return {
        "image_data": obj["image_data"][keep],
        "class_dict": {
            w: [new_row[r] for r in rows]
            for w, rows in obj["class_dict"].items()
            if w != wnid
        },
    }


def _orphan_rows(obj):
    wnid = sorted(obj["class_dict"])[0]
    return {
        **obj,
        "class_dict": {**obj["class_dict"], wnid: obj["class_dict"][wnid][1:]},
    }


CORRUPTIONS = {
    "missing key": (
        lambda o: {"image_data": o["image_data"]},
        r"no key\(s\) \['class_dict'\]",
    ),
    "wrong shape": (
        lambda o: {**o, "image_data": o["image_data"][:, :64, :64]},
        r"expected uint8 of shape \(N, 84, 84, 3\)",
    ),
    "class count": (_drop_class, "holds 15 classes, expected the 16 classes"),
    "rows of no class": (_orphan_rows, "belong to no class"),
    "rows out of range": (
        lambda o: {**o, "class_dict": {**o["class_dict"], "n01855672": [0, 10_000]}},
        r"rows outside \[0, 32\)",
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_cache_pickle_is_a_clear_error(tmp_path, corruption):
    write_mini_imagenet_cache(tmp_path, per_class=2)
    edit, message = CORRUPTIONS[corruption]
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    _rewrite(path, edit)
    with pytest.raises(DataError, match=message) as e:
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)


def test_truncated_and_missing_files(tmp_path):
    write_mini_imagenet_cache(tmp_path, per_class=1)
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated") as e:
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)
    (tmp_path / "mini-imagenet-cache-test.pkl").unlink()
    path.unlink()
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl is missing"):
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")


def test_metaoptnet_errors(tmp_path):
    write_mini_imagenet_metaoptnet(tmp_path, per_class=1)
    path = tmp_path / mini_imagenet.METAOPTNET_FILES["test"]
    _rewrite(path, lambda o: {"data": o["data"], "labels": o["labels"]})
    with pytest.raises(DataError, match=r"no key\(s\) \['catname2label'\]") as e:
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)
    write_mini_imagenet_metaoptnet(tmp_path, per_class=1)
    _rewrite(path, lambda o: {**o, "labels": [999] * len(o["labels"])})
    with pytest.raises(DataError, match=r"labels \[999\] are not in 'catname2label'"):
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    path.unlink()
    with pytest.raises(DataError, match=f"{path.name} is missing"):
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")


def test_nothing_found_lists_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="miniImageNet data not found") as e:
        load_mini_imagenet(tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "mini_imagenet") in str(e.value)
    assert "mini-imagenet-cache" in str(e.value)
