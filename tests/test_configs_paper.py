"""The paper's configs (CIFAR-FS VGG11, miniImageNet ResNet12): derived from omniglot, valid, and
their smoke variants run end to end on synthetic files in the real formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_data import write_cifar_fs_pickles, write_mini_imagenet_cache

from gtl_jax.configs import load_config
from gtl_jax.data import ClassPool
from gtl_jax.evolve import ConfigError, main, run, validate_config

PAPER = {
    "cifar_fs": {"dataset": "cifar_fs", "model": "vgg11", "image_size": 32},
    "mini_imagenet": {
        "dataset": "mini_imagenet",
        "model": "resnet12",
        "image_size": 84,
    },
}


def _full_size_pools():
    # validate_config reads only class counts and images per class.
    return {
        s: ClassPool(images=np.zeros((n, 600, 1, 1, 3), np.uint8))
        for s, n in (("train", 64), ("val", 16), ("test", 20))
    }


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_extends_omniglot_and_is_valid(name):
    omniglot = load_config("omniglot")
    for variant in ("", ":smoke"):
        c = load_config(name + variant)
        assert set(c) == set(omniglot)  # every omniglot field flows in
        for field, value in PAPER[name].items():
            assert c[field] == value
        assert c.augment == "crop_flip"
        validate_config(c, _full_size_pools())
    assert load_config(name).width == 1.0 and load_config(name).eval_episodes == 600
    with pytest.raises(ValueError, match="known: smoke"):
        load_config(f"{name}:tiny")


def test_augment_field_is_validated():
    c = load_config("omniglot")
    assert c.augment == "none"
    c.augment = "mixup"
    with pytest.raises(ConfigError, match="augment='mixup'"):
        validate_config(c)


def test_cifar_fs_smoke_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_cifar_fs_pickles(data, per_class=4)
    workdir = tmp_path / "run"
    argv = [
        "--config",
        "cifar_fs:smoke",
        "--data_dir",
        str(data),
        "--workdir",
        str(workdir),
    ]
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cifar_fs meta-test classes; vgg11 x0.0625" in out
    assert "| learngene |" in out and "| scratch |" in out
    metadata = json.loads((workdir / "learngene" / "metadata.json").read_text())
    assert metadata["dataset"] == {
        "name": "cifar_fs",
        "splits": {"train": 64, "val": 16, "test": 20},
    }
    assert metadata["image_shape"] == [32, 32, 3]


def test_mini_imagenet_smoke_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_mini_imagenet_cache(data, per_class=4)
    c = load_config("mini_imagenet:smoke")
    c.data_dir = str(data)
    summary = run(c, tmp_path / "run", quiet=True)
    results = summary["results"]
    assert set(results) == {"1-shot/learngene", "1-shot/scratch"}
    for r in results.values():
        assert 0.0 <= r["accuracy"][0] <= 1.0
        assert len(r["per_episode"]) == c.eval_episodes
    assert "mini_imagenet meta-test classes; resnet12" in summary["table"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == c.generations
