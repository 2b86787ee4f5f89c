"""The paper's configs (CIFAR-FS VGG11, miniImageNet ResNet12): derived from omniglot, valid, and
their smoke variants run end to end on synthetic files in the real formats."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from synthetic_data import write_cifar_fs_pickles, write_mini_imagenet_cache

from gtl_jax.data import ClassPool
from gtl_jax.evolve import main, run
from gtl_jax.experiment import ConfigError, flatten, load_config, validate_config

PAPER = {
    "cifar_fs": {
        "data.dataset": "cifar_fs",
        "model.name": "vgg11",
        "data.image_size": 32,
    },
    "mini_imagenet": {
        "data.dataset": "mini_imagenet",
        "model.name": "resnet12",
        "data.image_size": 84,
    },
}
# The values the paper configs set (as before the configs were nested): the rest is
# the omniglot config's.
PAPER_SCALE = {
    "model.width": 1.0,
    "evolution.augment": "crop_flip",
    "evolution.pop_size": 12,
    "evolution.generations": 20,
    "evolution.life_steps": 200,
    "evolution.num_critics": 4,
    "evolution.critic_steps": 50,
    "evaluation.eval_episodes": 600,
    "descendants.steps": 50,
}
PAPER_SMOKE = {
    "model.width": 0.0625,
    "evolution.augment": "crop_flip",
    "evolution.pop_size": 3,
    "evolution.generations": 2,
    "evolution.life_steps": 2,
    "evolution.num_critics": 1,
    "evolution.critic_query": 2,
    "evolution.critic_steps": 2,
    "evaluation.eval_episodes": 2,
    "evaluation.eval_shots": "1",
    "evaluation.eval_query": 2,
    "descendants.steps": 2,
    "descendants.eval_every": 1,
    "execution.workers": 1,
}
LIFE_BATCH = {"cifar_fs": (64, 8), "mini_imagenet": (32, 4)}


def _full_size_pools():
    # validate_config reads only class counts and images per class.
    return {
        s: ClassPool(images=np.zeros((n, 600, 1, 1, 3), np.uint8))
        for s, n in (("train", 64), ("val", 16), ("test", 20))
    }


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_extends_omniglot_and_is_valid(name):
    omniglot = flatten(load_config("omniglot").to_dict())
    for variant, batch, values in (
        ("", LIFE_BATCH[name][0], PAPER_SCALE),
        (":smoke", LIFE_BATCH[name][1], PAPER_SMOKE),
    ):
        c = load_config(name + variant)
        expected = omniglot | PAPER[name] | values | {"evolution.life_batch": batch}
        assert flatten(c.to_dict()) == expected  # the rest flows in from omniglot
        validate_config(c, _full_size_pools())
    assert load_config(f"configs/{name}.py") == load_config(name)
    with pytest.raises(ValueError, match="known: smoke"):
        load_config(f"{name}:tiny")


def test_augment_field_is_validated():
    c = load_config("omniglot")
    assert c.evolution.augment == "none"
    c.evolution.augment = "mixup"
    with pytest.raises(ConfigError, match="config field evolution.augment='mixup'"):
        validate_config(c)


@pytest.mark.slow
def test_cifar_fs_smoke_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_cifar_fs_pickles(data, per_class=4)
    workdir = tmp_path / "run"
    argv = [
        "--config=configs/cifar_fs.py:smoke",
        f"--config.data.data_dir={data}",
        f"--workdir={workdir}",
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


@pytest.mark.slow
def test_mini_imagenet_smoke_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_mini_imagenet_cache(data, per_class=4)
    c = load_config("mini_imagenet:smoke")
    c.data.data_dir = str(data)
    summary = run(c, tmp_path / "run", quiet=True)
    results = summary["results"]
    assert set(results) == {"1-shot/learngene", "1-shot/scratch"}
    for r in results.values():
        assert 0.0 <= r["accuracy"][0] <= 1.0
        assert len(r["per_episode"]) == c.evaluation.eval_episodes
    assert "mini_imagenet meta-test classes; resnet12" in summary["table"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == c.evolution.generations


OMNIGLOT_SMOKE = {
    "model.width": 0.0625,
    "evolution.pop_size": 3,
    "evolution.generations": 2,
    "evolution.life_steps": 3,
    "evolution.num_critics": 1,
    "evolution.critic_steps": 2,
    "evolution.rescore_episodes": 2,
    "evaluation.eval_episodes": 3,
    "descendants.steps": 2,
    "descendants.eval_every": 1,
    "suite.inherit_episodes": 3,
    "suite.pretrain_steps": 3,
    "suite.seeds": "0,1",
    "suite.study_episodes": 2,
    "execution.workers": 1,
}


def test_omniglot_sections_are_the_dataclass_defaults_and_smoke_sets_its_values():
    from gtl_jax.experiment import SECTIONS, experiment_of

    c = load_config("omniglot")
    assert set(c) == {"seed", *SECTIONS} and c.seed == 0
    for name, cls in SECTIONS.items():  # each default is written once, in the dataclass
        assert c[name].to_dict() == dataclasses.asdict(cls()), name
    assert experiment_of(c).evolution == experiment_of(c).evolution.__class__()
    base = flatten(c.to_dict())
    smoke = flatten(load_config("omniglot:smoke").to_dict())
    assert {k: v for k, v in smoke.items() if base[k] != v} == OMNIGLOT_SMOKE
