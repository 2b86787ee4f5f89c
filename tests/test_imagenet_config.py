"""The ImageNet-1K config (configs/imagenet.py): valid at full size, and its smoke variant
end to end on a synthetic imagenet2012 in the tfds prepared format, with every generation
handed its own streamed lifetime pool: on 1 device (and a resumed run ends with the same
learngene), on 8 fake CPU devices and as 2 joined processes (subprocesses, as in
tests/test_sharding.py and tests/test_resume.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from synthetic_data import write_imagenet2012

from gtl_jax.checkpoint import load_learngene
from gtl_jax.data import ClassPool
from gtl_jax.data.imagenet import ImageNetSampler, Options
from gtl_jax.evolve import main, run
from gtl_jax.executors import HostExecutor
from gtl_jax.experiment import (
    ConfigError,
    config_changes,
    load_config,
    validate_config,
)

CONFIG = ROOT / "configs" / "imagenet.py"
SMOKE = [f"--config={CONFIG}:smoke", "--quiet"]
TIMEOUT = 300  # seconds for one command


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    write_imagenet2012(folder, train_per_class=6, validation_per_class=4)
    return folder


def _pools(c) -> dict:
    # validate_config reads only class counts and images per class.
    d = c.data
    n_train, n_val, n_test = (int(v) for v in d.classes.split(","))
    shape = (1, 1, 3)
    return {
        "train": ClassPool(
            np.zeros((d.classes_per_generation, d.images_per_class, *shape), np.uint8)
        ),
        "val": ClassPool(np.zeros((n_val, d.eval_images_per_class, *shape), np.uint8)),
        "test": ClassPool(
            np.zeros((n_test, d.eval_images_per_class, *shape), np.uint8)
        ),
    }


def test_the_config_is_valid_and_its_fields_are_checked():
    c = load_config(str(CONFIG))
    assert (c.data.dataset, c.data.image_size, c.model.name) == (
        "imagenet",
        224,
        "vit_small",
    )
    assert c.data.classes == "800,100,100" and c.evolution.augment == "crop_flip"
    validate_config(c, _pools(c))
    smoke = load_config(f"{CONFIG}:smoke")
    validate_config(smoke, _pools(smoke))
    for field, value, message in (
        ("classes", "800,100", "config field data.classes='800,100': must be three"),
        ("classes_per_generation", 801, "data.classes_per_generation=801: more than"),
        ("eval_images_per_class", 0, "data.eval_images_per_class=0: must be >= 1"),
    ):
        bad = load_config(str(CONFIG))
        bad.data[field] = value
        with pytest.raises(ConfigError, match=message):
            validate_config(bad)
    # A critic episode needs critic_shot + critic_query images of a class.
    few = load_config(str(CONFIG))
    few.data.eval_images_per_class = 10
    with pytest.raises(ConfigError, match="evaluation.eval_query"):
        validate_config(few, _pools(few))


@pytest.mark.slow
def test_smoke_runs_on_one_device_each_generation_on_its_own_pool(
    data_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("GTL_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    generation = HostExecutor.generation

    def spy(self, root_key, state, *args, pools=None, **kwargs):
        seen.append(np.asarray(jax.device_get(pools.train)))
        return generation(self, root_key, state, *args, pools=pools, **kwargs)

    monkeypatch.setattr(HostExecutor, "generation", spy)
    workdir = tmp_path / "full"
    argv = [*SMOKE, f"--config.data.data_dir={data_dir}", f"--workdir={workdir}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "imagenet meta-test classes; vit_fs x0.25" in out and "| learngene |" in out
    # Generation g trained on the stream's pool g, drawn from (seed, g).
    c = load_config(f"{CONFIG}:smoke")
    d = c.data
    sampler = ImageNetSampler(
        data_dir,
        Options(
            image_size=d.image_size,
            classes=d.classes,
            classes_per_generation=d.classes_per_generation,
            images_per_class=d.images_per_class,
            eval_images_per_class=d.eval_images_per_class,
            seed=c.seed,
        ),
    )
    assert len(seen) == c.evolution.generations == 2
    for g, images in enumerate(seen):
        np.testing.assert_array_equal(images, sampler.train_pool(g).images)
    assert not np.array_equal(seen[0], seen[1])
    metadata = json.loads((workdir / "learngene" / "metadata.json").read_text())
    assert metadata["dataset"] == {
        "name": "imagenet",
        "splits": {"train": 4, "val": 5, "test": 5},
    }
    assert metadata["image_shape"] == [32, 32, 3]

    # Killed after generation 1, resumed: the same pools, the same learngene.
    c.data.data_dir = str(data_dir)
    part = tmp_path / "part"
    c.evolution.generations = 1
    run(c, part, quiet=True, final_table=False)
    c.evolution.generations = 2
    run(c, part, quiet=True, final_table=False)
    resumed, _ = load_learngene(part / "learngene")
    gene, _ = load_learngene(workdir / "learngene")
    jax.tree.map(np.testing.assert_array_equal, resumed, gene)


def _evolve(data_dir, workdir, tmp_path, *, devices: int, flags=()):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "GTL_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-m", "gtl_jax.evolve", *SMOKE, *flags]
    command += [f"--config.data.data_dir={data_dir}", f"--workdir={workdir}"]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| learngene |") == 1  # only process 0 prints
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [1, 2]
    return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_smoke_runs_on_8_devices(data_dir, tmp_path):
    # The population of 3 is padded over the 8 devices; each generation's pool is
    # replicated onto all of them.
    summary = _evolve(data_dir, tmp_path / "w", tmp_path, devices=8)
    assert (summary["devices"], summary["processes"]) == (8, 1)


@pytest.mark.slow
def test_smoke_runs_as_2_joined_processes(data_dir, tmp_path):
    # Each process draws the same generation pools from the same keys. The population
    # (3) is padded over the 2 processes' devices.
    flags = ["--config.execution.processes=2"]
    summary = _evolve(data_dir, tmp_path / "w", tmp_path, devices=1, flags=flags)
    assert (summary["devices"], summary["processes"]) == (2, 2)


def test_a_generation_samples_from_the_pools_it_is_given():
    # The streaming hook: HostExecutor.generation(..., pools=...) trains and judges on the
    # given pools (the same images as the evolution's own: the same generation, exactly;
    # other images: another one), compiled once for both.
    from gtl_jax.descendants import Recipe
    from gtl_jax.evolution import Evolution, EvolutionConfig
    from gtl_jax.learngene import make_spec
    from gtl_jax.models import build_model

    rng = np.random.default_rng(0)
    train, val = (
        rng.integers(0, 256, (n, 4, 28, 28, 3), dtype=np.uint8) for n in (6, 5)
    )
    config = EvolutionConfig(
        pop_size=3, tournament_size=3, life_way=3, life_steps=1, life_batch=4
    )
    config = dataclasses.replace(
        config, num_critics=1, critic_query=2, critic_steps=1, rescore_episodes=0
    )
    model = build_model("vgg11", 3, width=1 / 16)
    critic = build_model("vgg11", 5, width=1 / 16)
    evo = Evolution(
        model,
        critic,
        make_spec(model, 0.45, 3),
        config,
        Recipe(steps=1, eval_every=1),
        jnp.asarray(train),  # as gtl_jax.experiment.make_evolution builds it
        jnp.asarray(val),
    )
    executor = HostExecutor(evo, "loop")
    key = jax.random.key(0)
    state = evo.init(key)
    own, own_metrics = executor.generation(key, state)
    same, same_metrics = executor.generation(
        key, state, pools=evo.put_pools(train, val)
    )
    np.testing.assert_equal(same_metrics, own_metrics)  # NaN equals NaN here
    jax.tree.map(np.testing.assert_array_equal, same.trained, own.trained)
    other = evo.put_pools(255 - train, val)
    moved, _ = executor.generation(key, state, pools=other)
    leaves = [jax.tree.leaves(s.trained) for s in (moved, own)]
    assert not all(np.array_equal(a, b) for a, b in zip(*leaves))
    assert executor.life_step.member._cache_size() == 1
    with pytest.raises(ValueError, match=r"the train pool is uint8\[5, 4, 28, 28, 3\]"):
        evo.put_pools(train[:5])


def test_a_workdir_written_before_the_streaming_fields_resumes():
    # config.json of a run made before data.classes & co. existed: the missing fields are
    # their defaults, not changes that would refuse the resume.
    c = json.loads(load_config(str(ROOT / "configs" / "omniglot.py")).to_json())
    previous = json.loads(json.dumps(c))
    for field in (
        "classes",
        "classes_per_generation",
        "images_per_class",
        "eval_images_per_class",
    ):
        del previous["data"][field]
    assert config_changes(previous, c) == []
    previous["data"]["image_size"] = 14
    assert config_changes(previous, c) == ["data.image_size"]
