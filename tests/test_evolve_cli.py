"""The command line end to end on real Omniglot (smoke sizes), resume, and its errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gtl_jax.checkpoint import load_learngene
from gtl_jax.configs import load_config
from gtl_jax.evolution import EvolutionConfig
from gtl_jax.evolve import (
    CPU_XLA_FLAGS,
    LifeWorkers,
    cpu_xla_flags,
    from_config,
    main,
    make_evolution,
)
from gtl_jax.executors import HostExecutor

SMOKE = ["--config", "omniglot:smoke", "--quiet"]


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for field in load_config("omniglot"):
        assert f"--{field}" in text, field


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--pop_size", "4"], "pop_size"),
        (["--ratio", "1.5"], "ratio"),
        (["--model", "vgg12"], "model"),
        (["--eval_shots", "1,x"], "eval_shots"),
        (["--head", "linear"], "head"),
    ],
)
def test_impossible_config_names_the_field(flags, field, capsys, tmp_path):
    assert main(SMOKE + ["--workdir", str(tmp_path)] + flags) == 2
    assert field in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["_paper", "no_such_config", "os.path"])
def test_unknown_config_names_the_known_ones(name, capsys, tmp_path):
    # _paper is the paper configs' private helper module, not a config.
    assert main(["--config", f"{name}:smoke", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"unknown config {name!r}" in err and "omniglot" in err
    assert not any(tmp_path.iterdir())


def test_more_ways_than_classes_names_the_field(capsys, tmp_path):
    assert main(SMOKE + ["--workdir", str(tmp_path), "--eval_way", "700"]) == 2
    assert "eval_way" in capsys.readouterr().err


def test_missing_dataset_says_where_it_looked(capsys, tmp_path):
    missing = tmp_path / "no_such_dir"
    assert (
        main(SMOKE + ["--workdir", str(tmp_path / "w"), "--data_dir", str(missing)])
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "GTL_DATA_DIR" in err


def test_smoke_run_then_resume_gives_the_same_learngene(tmp_path, capsys):
    # Uninterrupted: 2 generations.
    full = tmp_path / "full"
    assert main(SMOKE + ["--workdir", str(full)]) == 0
    out = capsys.readouterr().out
    assert "| learngene |" in out and "| scratch |" in out
    for name in (
        "results.md",
        "results.json",
        "metrics.jsonl",
        "fitness.png",
        "curves.png",
    ):
        assert (full / name).is_file(), name
    metrics = [
        json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["generation"] for m in metrics] == [1, 2]
    assert [m["diverged"] for m in metrics] == [0, 0]  # counted every generation
    results = json.loads((full / "results.json").read_text())["results"]
    assert set(results) == {
        "1-shot/learngene",
        "1-shot/scratch",
        "5-shot/learngene",
        "5-shot/scratch",
    }
    gene, meta = load_learngene(full / "learngene")
    assert meta["generation"] == 2 and meta["model"]["name"] == "vgg11"
    assert 0.15 < meta["parameter_share"]["share_of_network"] < 0.25

    # Interrupted after generation 1, then resumed from the workdir to 2.
    part = tmp_path / "part"
    assert main(SMOKE + ["--workdir", str(part), "--generations", "1"]) == 0
    assert main(SMOKE + ["--workdir", str(part)]) == 0
    resumed, _ = load_learngene(part / "learngene")
    jax.tree.map(np.testing.assert_array_equal, resumed, gene)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [1, 2]

    # A different evolution config in the same workdir is refused, nothing destroyed.
    assert main(SMOKE + ["--workdir", str(part), "--life_lr", "0.3"]) == 2
    assert "life_lr" in capsys.readouterr().err
    assert (part / "learngene" / "metadata.json").is_file()


def test_worker_processes_compute_the_lives_of_the_population(omniglot):
    c = load_config("omniglot:smoke")  # pop 3: blocks of 2 and 1 members
    evo = HostExecutor(make_evolution(c, omniglot), c.strategy)
    key = jax.random.fold_in(jax.random.key(1), 0)
    genes = evo.evo.init(jax.random.key(0)).learngenes
    here_steps, there_steps = [], []
    here = jax.device_get(evo.lives(key, genes, on_step=here_steps.append))
    with LifeWorkers(c, 2) as workers:
        there = workers(key, genes, there_steps.append)
    # A pinned worker computes on one core, this process on two: XLA may sum in another
    # order, so equal up to float rounding; a flipped query moves accuracy by 1/75.
    query = 1 / (c.critic_way * c.critic_query)
    np.testing.assert_allclose(there.fitness, here.fitness, atol=query + 1e-6)
    np.testing.assert_allclose(there.instinct, here.instinct, atol=query + 1e-6)
    np.testing.assert_array_equal(there.diverged, here.diverged)
    np.testing.assert_allclose(
        there.life_losses, here.life_losses, rtol=1e-4, atol=1e-5
    )
    for a, b in zip(jax.tree.leaves(there.trained), jax.tree.leaves(here.trained)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The progress the workers report adds up to the steps of the whole population.
    assert sum(there_steps) == pytest.approx(sum(here_steps))
    assert sum(here_steps) == pytest.approx(c.life_steps + c.critic_steps)
    # Pinned workers compute on one core each: the numbers do not depend on how many there
    # are (one worker runs all 3 members; two run 2 and 1).
    with LifeWorkers(c, 1) as worker:
        alone = worker(key, genes)
    for a, b in zip(jax.tree.leaves(there), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(a, b)


def test_library_defaults_are_the_default_config():
    assert from_config(EvolutionConfig, load_config("omniglot")) == EvolutionConfig()


def test_cpu_xla_flags_only_for_checked_jaxlib_and_never_over_the_users():
    (flag,) = CPU_XLA_FLAGS
    name = flag.split("=")[0]
    assert cpu_xla_flags("", "0.10.2") == flag
    assert cpu_xla_flags("--xla_force_host_platform_device_count=8", "0.10.0") == (
        f"--xla_force_host_platform_device_count=8 {flag}"
    )
    assert cpu_xla_flags(f"{name}=true", "0.10.2") == f"{name}=true"  # the user's wins
    # XLA aborts on flags it does not know: other versions get XLA_FLAGS unchanged.
    assert cpu_xla_flags("", "0.4.35") == ""
    assert cpu_xla_flags("--x=1", "0.11.0") == "--x=1"
