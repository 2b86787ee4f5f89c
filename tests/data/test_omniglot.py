"""Tests of the Omniglot loader on the real shared arrays (cwd = repo root, as CI)."""

from __future__ import annotations

import os
import pathlib
import re
import time

import numpy as np
import pytest

from gtl_jax.data import DataError, files, load_dataset, omniglot
from gtl_jax.data.omniglot import (
    BACKGROUND_FILE,
    EVALUATION_FILE,
    area_resize_matrix,
    check_images,
    find_omniglot_dir,
    ink_to_uint8,
    load_omniglot,
    read_val_alphabets,
    split_background,
)


def _alphabet(name: str) -> str:
    return name.split("/")[0]


@pytest.fixture(scope="module")
def real_dir() -> pathlib.Path:
    return find_omniglot_dir()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A cold load then a warm load into one fresh cache dir."""
    cache_dir = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    cold = load_omniglot(cache_dir=cache_dir)
    cold_s = time.perf_counter() - start
    print(f"omniglot cold load: {cold_s:.2f} s")
    return cold, cache_dir


def _mirror(src: pathlib.Path, dst: pathlib.Path, names) -> pathlib.Path:
    """Symlinks ``names`` of the real data folder into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.symlink(src / name, dst / name)
    return dst


# --- the real data -------------------------------------------------------------


def test_real_split_counts(loaded):
    pools, _ = loaded
    assert set(pools) == {"train", "val", "test"}
    counts = {k: p.num_classes for k, p in pools.items()}
    assert counts["train"] + counts["val"] == 964
    assert counts["test"] == 659
    assert counts == {"train": 787, "val": 177, "test": 659}
    for pool in pools.values():
        assert len(pool.class_names) == pool.num_classes
        assert len(set(pool.class_names)) == pool.num_classes
        assert all(re.fullmatch(r"[^/]+/character\d\d", n) for n in pool.class_names)


def test_real_splits_are_alphabet_disjoint(loaded):
    pools, _ = loaded
    alphabets = {k: {_alphabet(n) for n in p.class_names} for k, p in pools.items()}
    assert alphabets["val"] == set(read_val_alphabets())
    assert len(alphabets["val"]) == 5
    assert len(alphabets["train"]) == 25
    assert len(alphabets["test"]) == 20
    assert not alphabets["train"] & alphabets["val"]
    assert not alphabets["test"] & (alphabets["train"] | alphabets["val"])
    assert "Armenian/character07" in pools["train"].class_names


def test_real_images_are_bright_ink_on_black(loaded):
    pools, _ = loaded
    for pool in pools.values():
        images = pool.images
        assert isinstance(images, np.ndarray)
        assert images.dtype == np.uint8
        assert images.shape == (pool.num_classes, 20, 28, 28, 1)
        # Ink is a small fraction of each image: paper must have become 0.
        assert images.mean() < 40
        assert images.max() == 255 and images.min() == 0
        assert np.median(images) == 0


def test_cache_is_written_and_reused(loaded, monkeypatch):
    cold, cache_dir = loaded
    (cache_file,) = cache_dir.iterdir()
    assert cache_file.suffix == ".npz" and "_s28_" in cache_file.name
    assert omniglot.BACKGROUND_SHA256[:12] in cache_file.name
    assert omniglot.EVALUATION_SHA256[:12] in cache_file.name
    np.load(cache_file, allow_pickle=False).close()

    def no_resize(*args, **kwargs):
        raise AssertionError("a warm load must not resize again")

    monkeypatch.setattr(omniglot, "ink_to_uint8", no_resize)
    start = time.perf_counter()
    warm = load_dataset("omniglot", cache_dir=cache_dir)
    print(f"omniglot warm load: {time.perf_counter() - start:.2f} s")
    for split in cold:
        np.testing.assert_array_equal(warm[split].images, cold[split].images)
        assert warm[split].class_names == cold[split].class_names


def test_find_accepts_the_parent_folder_and_env(real_dir, tmp_path, monkeypatch):
    inner = _mirror(real_dir, tmp_path / "omniglot", [BACKGROUND_FILE, EVALUATION_FILE])
    assert find_omniglot_dir(tmp_path) == inner.resolve()
    assert find_omniglot_dir(inner) == inner.resolve()
    monkeypatch.setenv("GTL_DATA_DIR", str(tmp_path))
    assert find_omniglot_dir() == inner.resolve()


# --- resizing ------------------------------------------------------------------


def test_area_matrix_is_row_stochastic_and_area_preserving():
    r = area_resize_matrix(105, 28)
    assert r.shape == (28, 105)
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(r.sum(axis=0), 28 / 105, atol=1e-6)
    np.testing.assert_array_equal(area_resize_matrix(105, 105), np.eye(105))


def test_all_ink_maps_to_255():
    paper_false = np.zeros((2, 3, 105, 105), dtype=bool)  # False is ink.
    out = ink_to_uint8(paper_false, 28)
    assert out.shape == (2, 3, 28, 28, 1) and out.dtype == np.uint8
    assert (out == 255).all()
    assert (ink_to_uint8(~paper_false, 28) == 0).all()


def test_area_averaging_preserves_mean_intensity():
    rng = np.random.default_rng(0)
    images = rng.random((2, 5, 105, 105)) < 0.7
    for size in (28, 14, 84):
        out = ink_to_uint8(images, size).astype(np.float64) / 255.0
        ink = (~images).astype(np.float64)
        # Per image, rounding to 1/255 moves the mean by at most half a step.
        np.testing.assert_allclose(
            out.mean(axis=(2, 3, 4)), ink.mean(axis=(2, 3)), atol=0.5 / 255 + 1e-6
        )


# --- bad data ------------------------------------------------------------------


def test_corrupt_file_fails_checksum(real_dir, tmp_path):
    data = _mirror(real_dir, tmp_path / "data", [EVALUATION_FILE, "alphabets.csv"])
    raw = bytearray((real_dir / BACKGROUND_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (data / BACKGROUND_FILE).write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256") as info:
        load_omniglot(data, cache_dir=tmp_path / "cache")
    assert BACKGROUND_FILE in str(info.value)
    assert omniglot.BACKGROUND_SHA256 in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_truncated_file_fails_checksum(real_dir, tmp_path):
    data = _mirror(real_dir, tmp_path / "data", [BACKGROUND_FILE, "alphabets.csv"])
    raw = (real_dir / EVALUATION_FILE).read_bytes()
    (data / EVALUATION_FILE).write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match="checksum") as info:
        load_omniglot(data, cache_dir=tmp_path / "cache")
    assert EVALUATION_FILE in str(info.value)


def test_missing_data_lists_looked_at_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GTL_DATA_DIR", str(tmp_path / "env_dir"))
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(DataError) as info:
        find_omniglot_dir()
    message = str(info.value)
    for looked_at in [
        tmp_path / "env_dir",
        tmp_path / "env_dir" / "omniglot",
        tmp_path / "../shared/data/omniglot",
        tmp_path / "repo/../shared/data/omniglot",
        tmp_path / "cache/data/omniglot",  # where downloads go
    ]:
        assert str(looked_at.resolve()) in message
    for hint in [
        "--config.data.data_dir",
        "GTL_DATA_DIR",
        "GTL_OMNIGLOT_URL",
        BACKGROUND_FILE,
        EVALUATION_FILE,
        omniglot.BACKGROUND_ZIP,
        omniglot.EVALUATION_ZIP,
    ]:
        assert hint in message
    assert "(964, 20, 105, 105)" in message


def test_explicit_wrong_data_dir_does_not_fall_back(real_dir, tmp_path, monkeypatch):
    # The real data is findable from here (cwd = repo root) ...
    assert find_omniglot_dir() == real_dir
    wrong = tmp_path / "empty"
    wrong.mkdir()
    # ... but an explicit wrong path is an error naming it, not a fallback.
    with pytest.raises(DataError, match=re.escape(str(wrong))):
        find_omniglot_dir(wrong)
    with pytest.raises(DataError, match="not an Omniglot folder"):
        load_omniglot(wrong / "typo", cache_dir=tmp_path / "cache")
    # An existing empty folder is downloaded into (conftest: to a closed local port).
    monkeypatch.setattr(files, "RETRY_WAIT_S", 0.0)
    with pytest.raises(DataError, match="cannot download") as info:
        load_omniglot(wrong, cache_dir=tmp_path / "cache")
    assert f"in {wrong}," in str(info.value)
    assert not list(wrong.iterdir())


def test_wrong_shape_or_dtype_names_the_expected_shape():
    with pytest.raises(DataError, match=re.escape("(964, 20, 105, 105)")) as info:
        check_images(
            np.zeros((10, 20, 105, 105), bool), num_classes=964, file_name="x.npz"
        )
    assert "x.npz" in str(info.value)
    wrong_dtype = np.broadcast_to(np.uint8(0), (659, 20, 105, 105))
    with pytest.raises(DataError, match="bool"):
        check_images(wrong_dtype, num_classes=659, file_name="y.npz")
    check_images(
        np.broadcast_to(np.False_, (659, 20, 105, 105)),
        num_classes=659,
        file_name="ok.npz",
    )


def test_missing_images_key(tmp_path):
    path = tmp_path / BACKGROUND_FILE
    np.savez(path, pictures=np.zeros((2, 2), bool))
    with pytest.raises(DataError, match="no array 'images'"):
        omniglot._load_images(path, 964)


def test_missing_alphabets_csv(real_dir, tmp_path):
    data = _mirror(real_dir, tmp_path / "data", [BACKGROUND_FILE, EVALUATION_FILE])
    with pytest.raises(DataError, match="alphabets.csv"):
        load_omniglot(data, cache_dir=tmp_path / "cache")


# --- splits --------------------------------------------------------------------


def test_split_background_by_alphabet():
    train, val = split_background(["A", "A", "B", "C", "B"], ["B"])
    np.testing.assert_array_equal(train, [0, 1, 3])
    np.testing.assert_array_equal(val, [2, 4])
    with pytest.raises(DataError, match="Klingon"):
        split_background(["A", "B"], ["B", "Klingon"])


def test_split_file_with_unknown_alphabet(real_dir, tmp_path, monkeypatch):
    split_file = tmp_path / "val.txt"
    split_file.write_text("# a comment\nArmenian\nKlingon  # not real\n\n")
    assert read_val_alphabets(split_file) == ["Armenian", "Klingon"]
    monkeypatch.setattr(omniglot, "VAL_ALPHABETS_FILE", split_file)
    with pytest.raises(DataError, match="Klingon"):
        load_omniglot(real_dir, cache_dir=tmp_path / "cache")


def test_shipped_split_file_names_five_background_alphabets(real_dir):
    val = read_val_alphabets()
    assert len(val) == 5
    background = omniglot.read_alphabets(real_dir)["background"]
    assert set(val) <= set(background)


# --- cache robustness ----------------------------------------------------------


def test_unwritable_cache_warns(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    pools = {"train": omniglot.ClassPool(np.zeros((1, 20, 2, 2, 1), np.uint8), ("a",))}
    with pytest.warns(UserWarning, match="could not write"):
        files.write_cache(blocker / "sub" / "cache.npz", pools)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_damaged_cache_is_ignored(tmp_path):
    path = tmp_path / "cache.npz"
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        assert files.read_cache(path, image_shape=(20, 28, 28, 1)) is None


def test_cache_of_another_image_shape_is_ignored(tmp_path):
    path = tmp_path / "cache.npz"
    pool = omniglot.ClassPool(np.zeros((1, 20, 2, 2, 1), np.uint8), ("a",))
    files.write_cache(path, dict.fromkeys(("train", "val", "test"), pool))
    assert files.read_cache(path, image_shape=(20, 2, 2, 1)) is not None
    with pytest.warns(UserWarning, match="ignoring unreadable"):
        assert files.read_cache(path, image_shape=(20, 28, 28, 1)) is None


def test_cache_name_depends_on_size_and_split():
    names = {
        omniglot._cache_path(pathlib.Path("c"), size, split).name
        for size in (28, 84)
        for split in ("aa" * 32, "bb" * 32)
    }
    assert len(names) == 4


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="omniglot"):
        load_dataset("nope")
