"""The CIFAR-FS loader on small synthetic files in each real format, and its errors."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from synthetic_data import (
    write_cifar100_archive,
    write_cifar100_folder,
    write_cifar_fs_pickles,
)

from gtl_jax.data import DATASETS, DataError, cifar_fs, load_dataset
from gtl_jax.data.cifar_fs import load_cifar_fs

SIZES = {"train": 64, "val": 16, "test": 20}


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_pools(pools, written, per_class, size=32):
    lists = cifar_fs.split_lists()
    assert set(pools) == {"train", "val", "test"}
    for split, pool in pools.items():
        assert pool.class_names == tuple(lists[split])
        assert pool.images.shape == (SIZES[split], per_class, size, size, 3)
        assert pool.images.dtype == np.uint8
        if size == 32:
            for i, name in enumerate(pool.class_names):
                np.testing.assert_array_equal(pool.images[i], written[name])


# --- the split ------------------------------------------------------------------


def test_split_is_the_standard_64_16_20_of_cifar100():
    lists = cifar_fs.split_lists()
    assert {s: len(v) for s, v in lists.items()} == SIZES
    every = [n for names in lists.values() for n in names]
    assert len(set(every)) == 100
    names = cifar_fs.fine_label_names(lists)
    assert names[:3] == ["apple", "aquarium_fish", "baby"] and names[-1] == "worm"
    # A few classes of each split of Bertinetto et al.
    assert {"dolphin", "seal", "tank"} <= set(lists["train"])
    assert {"otter", "shark", "tractor"} <= set(lists["val"])
    assert {"whale", "woman", "pickup_truck"} <= set(lists["test"])


def test_registered():
    assert DATASETS["cifar_fs"] is load_cifar_fs


# --- the three sources ----------------------------------------------------------


def test_metaoptnet_pickles(tmp_path):
    written = write_cifar_fs_pickles(tmp_path, per_class=3)
    pools = load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=3)


def test_cache_is_written_and_reused(tmp_path, monkeypatch):
    written = write_cifar_fs_pickles(tmp_path, per_class=3)
    load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("cifar_fs_*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the sources were read again")

    monkeypatch.setattr(cifar_fs, "_metaoptnet_split", fail)
    pools = load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=3)


def test_archive_is_md5_checked_then_read(tmp_path):
    written = write_cifar100_archive(tmp_path, train_per_class=2, test_per_class=1)
    archive = tmp_path / cifar_fs.ARCHIVE
    # A synthetic archive is not the official one: the default check refuses it.
    with pytest.raises(DataError, match="md5 checksum mismatch") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(archive) in str(e.value) and cifar_fs.ARCHIVE_MD5 in str(e.value)
    # With its own checksum it loads: train and test merged, channel planes to HWC.
    pools = load_cifar_fs(
        tmp_path, cache_dir=tmp_path / "cache", archive_md5=_md5(archive)
    )
    _check_pools(pools, written, per_class=3)


def test_extracted_folder(tmp_path):
    written = write_cifar100_folder(tmp_path, train_per_class=2, test_per_class=2)
    pools = load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=4)
    # The folder itself works as data_dir too, and via the dataset registry.
    pools = load_dataset(
        "cifar_fs", tmp_path / "cifar-100-python", cache_dir=tmp_path / "cache"
    )
    _check_pools(pools, written, per_class=4)


def test_resized(tmp_path):
    written = write_cifar_fs_pickles(tmp_path, per_class=2)
    pools = load_cifar_fs(tmp_path, image_size=16, cache_dir=tmp_path / "cache")
    _check_pools(pools, written, per_class=2, size=16)
    first = written[pools["val"].class_names[0]][0].astype(np.float64)
    expected = first.reshape(16, 2, 16, 2, 3).mean((1, 3))  # 2x2 area means
    np.testing.assert_allclose(pools["val"].images[0, 0], np.rint(expected), atol=1)


def test_tfds_source_with_mocked_data_source(tmp_path):
    """The tfds path, with tfds' own mocking standing in for the prepared array_record data."""
    tfds = pytest.importorskip("tensorflow_datasets")
    prepared = tmp_path / "cifar100" / "3.0.2"
    prepared.mkdir(parents=True)
    for part in ("train", "test"):
        (prepared / f"cifar100-{part}.array_record-00000-of-00001").touch()
    assert cifar_fs.find_source(tmp_path) == ("tfds", tmp_path)
    rng = np.random.default_rng(0)
    records = {
        part: [
            {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": label}
            for _ in range(per_class)
            for label in range(100)
        ]
        for part, per_class in (("train", 2), ("test", 1))
    }

    def as_data_source(builder, split, **kwargs):
        return records[str(split)]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        pools = load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    names = cifar_fs.fine_label_names()
    whale = names.index("whale")
    expected = [
        r["image"] for p in ("train", "test") for r in records[p] if r["label"] == whale
    ]
    i = pools["test"].class_names.index("whale")
    assert pools["test"].images.shape == (20, 3, 32, 32, 3)
    np.testing.assert_array_equal(pools["test"].images[i], np.stack(expected))


# --- errors ---------------------------------------------------------------------


def _rewrite(path, edit):
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    with open(path, "wb") as f:
        pickle.dump(edit(obj), f, protocol=2)


def _drop_class(obj):
    keep = [i for i, label in enumerate(obj["labels"]) if label != obj["labels"][0]]
    return {"data": obj["data"][keep], "labels": [obj["labels"][i] for i in keep]}


def _unequal_counts(obj):
    return {"data": obj["data"][1:], "labels": obj["labels"][1:]}


CORRUPTIONS = {
    "missing key": (lambda o: {"data": o["data"]}, r"no key\(s\) \['labels'\]"),
    "wrong shape": (
        lambda o: {**o, "data": o["data"][:, :28, :28]},
        r"expected uint8 of shape \(N, 32, 32, 3\)",
    ),
    "wrong dtype": (
        lambda o: {**o, "data": o["data"].astype(np.float32)},
        "dtype float32",
    ),
    "class count": (_drop_class, "holds 15 classes, expected the 16 classes"),
    "unequal counts": (_unequal_counts, "different numbers of images"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_pickle_is_a_clear_error(tmp_path, corruption):
    write_cifar_fs_pickles(tmp_path, per_class=2)
    edit, message = CORRUPTIONS[corruption]
    path = tmp_path / "CIFAR_FS_val.pickle"
    _rewrite(path, edit)
    with pytest.raises(DataError, match=message) as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)


def test_truncated_pickle(tmp_path):
    write_cifar_fs_pickles(tmp_path, per_class=2)
    path = tmp_path / "CIFAR_FS_train.pickle"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)


def test_missing_split_file(tmp_path):
    write_cifar_fs_pickles(tmp_path, per_class=2)
    (tmp_path / "CIFAR_FS_test.pickle").unlink()
    with pytest.raises(DataError, match="CIFAR_FS_test.pickle is missing"):
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")


def test_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar_fs_pickles(tmp_path, per_class=2)
    path = tmp_path / "CIFAR_FS_val.pickle"
    with open(path, "wb") as f:
        pickle.dump({"data": eval, "labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load \w+\.eval") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(path) in str(e.value)


def test_archive_errors(tmp_path):
    archive = tmp_path / cifar_fs.ARCHIVE
    write_cifar100_archive(tmp_path, train_per_class=1, test_per_class=1)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DataError, match="cannot be read as a .tar.gz") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache", archive_md5=_md5(archive))
    assert str(archive) in str(e.value)
    # The checksum is checked before anything is read.
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")


def test_folder_errors(tmp_path):
    write_cifar100_folder(tmp_path, train_per_class=1, test_per_class=1)
    folder = tmp_path / "cifar-100-python"
    _rewrite(folder / "train", lambda o: {**o, b"data": o[b"data"][:, :1000]})
    with pytest.raises(DataError, match=r"'data' has shape \(100, 1000\)") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(folder / "train") in str(e.value)
    (folder / "meta").unlink()
    with pytest.raises(DataError, match="meta is missing"):
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")


def test_meta_names_must_be_cifar100(tmp_path):
    write_cifar100_folder(tmp_path, train_per_class=1, test_per_class=1)
    meta = tmp_path / "cifar-100-python" / "meta"
    _rewrite(meta, lambda o: {b"fine_label_names": o[b"fine_label_names"][::-1]})
    with pytest.raises(DataError, match="fine_label_names") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(meta) in str(e.value)


def test_nothing_found_lists_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="CIFAR-FS data not found") as e:
        load_cifar_fs(tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cifar_fs") in str(e.value)
    assert "cifar-100-python.tar.gz" in str(e.value)
