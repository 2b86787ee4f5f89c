"""The command line end to end on real Omniglot (smoke sizes), resume, and its errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.checkpoint import load_learngene
from gtl_jax.descendants import Recipe
from gtl_jax.evolution import Evolution, EvolutionConfig, all_finite
from gtl_jax.evolve import main
from gtl_jax.experiment import (
    CPU_XLA_FLAGS,
    FIELD_HELP,
    LifeWorkers,
    cpu_xla_flags,
    flatten,
    load_config,
    make_evolution,
)
from gtl_jax.learngene import make_spec
from gtl_jax.models import build_model

SMOKE = ["--config=configs/omniglot.py:smoke", "--quiet"]


def test_help_lists_every_config_field_once_with_its_default_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    fields = flatten(load_config("omniglot").to_dict())
    assert set(fields) == set(FIELD_HELP)  # one help line per section.field
    for path, value in fields.items():
        assert text.count(f"--config.{path} ") == 1, path
        assert f"--config.{path} (default: {value!r})\n      {FIELD_HELP[path]}" in text
    for flag in ("--config=", "--workdir", "--quiet"):
        assert flag in text
    # The defaults shown are the chosen config's.
    main_smoke = ["--config=omniglot:smoke", "--help"]
    with pytest.raises(SystemExit):
        main(main_smoke)
    assert "--config.evolution.pop_size (default: 3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--config.evolution.pop_sze=3"],
            "unknown config field evolution.pop_sze; did you mean evolution.pop_size?",
        ),
        (["--config.life_steps=3"], "unknown config field life_steps"),
        (["--life_steps", "3"], "Unknown command line flag 'life_steps'"),
        (["--config.evolution.pop_size=many"], "--config.evolution.pop_size=many"),
        (["--config.seed", "x"], "--config.seed"),
        (["--config.evolution", "3"], "config field evolution is a section"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_misspelled_field_or_flag_is_one_line_naming_it(
    flags, message, capsys, tmp_path
):
    assert main(SMOKE + ["--workdir", str(tmp_path / "w")] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--config.evolution.pop_size=4"], "evolution.pop_size"),
        (["--config.model.ratio=1.5"], "model.ratio"),
        (["--config.model.name=vgg12"], "model.name"),
        (["--config.evaluation.eval_shots=1,x"], "evaluation.eval_shots"),
        (["--config.descendants.head=linear"], "descendants.head"),
    ],
)
def test_impossible_config_names_the_field(flags, field, capsys, tmp_path):
    assert main(SMOKE + ["--workdir", str(tmp_path)] + flags) == 2
    assert f"config field {field}=" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["_paper", "no_such_config", "os.path"])
def test_unknown_config_names_the_known_ones(name, capsys, tmp_path):
    # _paper is the paper configs' private helper module, not a config.
    assert main([f"--config={name}:smoke", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"unknown config {name!r}" in err and "omniglot" in err
    assert not any(tmp_path.iterdir())


def test_config_paths_short_names_and_the_default_are_the_same_file(tmp_path):
    from gtl_jax.experiment import config_dir, resolve_config

    installed = (config_dir() / "omniglot.py").resolve()
    assert resolve_config("omniglot:smoke") == f"{installed}:smoke"
    assert load_config() == load_config("omniglot") == load_config(f"{installed}")
    assert load_config("configs/omniglot.py:smoke") == load_config("omniglot:smoke")
    with pytest.raises(ValueError, match="config file nowhere/x.py does not exist"):
        resolve_config("nowhere/x.py")


def test_more_ways_than_classes_names_the_field(capsys, tmp_path):
    flags = ["--workdir", str(tmp_path), "--config.evaluation.eval_way=700"]
    assert main(SMOKE + flags) == 2
    assert "config field evaluation.eval_way=700" in capsys.readouterr().err


def test_missing_dataset_says_where_it_looked(capsys, tmp_path):
    missing = tmp_path / "no_such_dir"
    flags = ["--workdir", str(tmp_path / "w"), f"--config.data.data_dir={missing}"]
    assert main(SMOKE + flags) == 2
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
    flags = ["--workdir", str(part), "--config.evolution.generations=1"]
    assert main(SMOKE + flags) == 0
    assert main(SMOKE + ["--workdir", str(part)]) == 0
    resumed, _ = load_learngene(part / "learngene")
    jax.tree.map(np.testing.assert_array_equal, resumed, gene)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [1, 2]

    # A different evolution config in the same workdir is refused, nothing destroyed.
    assert main(SMOKE + ["--workdir", str(part), "--config.evolution.life_lr=0.3"]) == 2
    assert "evolution.life_lr" in capsys.readouterr().err
    assert (part / "learngene" / "metadata.json").is_file()


def _tiny_evolution(omniglot, **overrides) -> Evolution:
    """3 VGG11 x1/16 on the first 20 classes of each split, a few steps each."""
    config = EvolutionConfig(
        **{"pop_size": 3, "tournament_size": 3, "life_way": 5, "life_steps": 2}
        | {"num_critics": 1}
        | overrides
    )
    model = build_model("vgg11", 5, width=1 / 16)
    train, val = (jnp.asarray(omniglot[s].images[:20]) for s in ("train", "val"))
    spec = make_spec(model, 0.45, 1)
    recipe = Recipe(steps=1, eval_every=1)
    return Evolution(model, model, spec, config, recipe, train, val, strategy="loop")


def test_two_generations_compile_once(omniglot):
    evo = _tiny_evolution(omniglot)
    key = jax.random.key(0)
    state = evo.init(key)
    for _ in range(2):
        state, metrics = evo.generation(key, state)
    assert int(state.generation) == 2 and metrics["generation"] == 2
    compiled = {
        "hosts": evo.hosts.member,
        "life_step": evo.life_step.member,
        "extract": evo.extract.member,
        # Critics run member-major: one compiled function per phase for all descendants.
        "critic_init": evo.critics.member_init,
        "critic_instinct": evo.critics.member_instinct,
        "critic_step": evo.critics.member_step,
        "critic_accuracy": evo.critics.member_accuracy,
        "reproduce": evo.reproduce,
    }
    for name, fn in compiled.items():
        assert fn._cache_size() == 1, name


def test_blocks_of_members_live_as_in_the_whole_population(omniglot):
    # What lets generation split the population between worker processes: a block draws the
    # whole population's keys and tasks, so its members' lives are bit-identical.
    evo = _tiny_evolution(omniglot)
    key = jax.random.fold_in(jax.random.key(1), 0)
    genes = evo.init(jax.random.key(0)).learngenes
    whole = jax.device_get(evo.lives(key, genes))
    blocks = [
        jax.device_get(
            evo.lives(
                key, jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], genes), lo, hi
            )
        )
        for lo, hi in ((0, 2), (2, 3))
    ]
    for field in ("fitness", "diverged", "instinct"):
        joined = np.concatenate([getattr(b, field) for b in blocks])
        np.testing.assert_array_equal(getattr(whole, field), joined)
    np.testing.assert_array_equal(
        whole.life_losses, np.concatenate([b.life_losses for b in blocks], axis=1)
    )
    for a, *parts in zip(
        *map(jax.tree.leaves, [whole.trained] + [b.trained for b in blocks])
    ):
        np.testing.assert_array_equal(a, np.concatenate(parts))


def test_worker_processes_compute_the_lives_of_the_population(omniglot):
    c = load_config("omniglot:smoke")  # pop 3: blocks of 2 and 1 members
    evo = make_evolution(c, omniglot)
    key = jax.random.fold_in(jax.random.key(1), 0)
    genes = evo.init(jax.random.key(0)).learngenes
    here_steps, there_steps = [], []
    here = jax.device_get(evo.lives(key, genes, on_step=here_steps.append))
    with LifeWorkers(c, 2) as workers:
        there = workers(key, genes, there_steps.append)
    # A pinned worker computes on one core, this process on two: XLA may sum in another
    # order, so equal up to float rounding; a flipped query moves accuracy by 1/75.
    query = 1 / (c.evolution.critic_way * c.evolution.critic_query)
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
    assert sum(here_steps) == pytest.approx(
        c.evolution.life_steps + c.evolution.critic_steps
    )
    # Pinned workers compute on one core each: the numbers do not depend on how many there
    # are (one worker runs all 3 members; two run 2 and 1).
    with LifeWorkers(c, 1) as worker:
        alone = worker(key, genes)
    for a, b in zip(jax.tree.leaves(there), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("poison", [jnp.nan, jnp.inf])
def test_a_diverging_individual_is_never_selected(poison, omniglot):
    evo = _tiny_evolution(omniglot)
    key = jax.random.key(0)
    state = evo.init(key)
    # Individual 1's learngene carries a NaN (or inf): its host's loss and learngene go
    # non-finite.
    layer = sorted(state.learngenes)[0]
    kernel = state.learngenes[layer]["kernel"]
    poisoned = {
        **state.learngenes,
        layer: {
            **state.learngenes[layer],
            "kernel": kernel.at[1, 0, 0, 0, 0].set(poison),
        },
    }
    state, metrics = evo.generation(key, state.replace(learngenes=poisoned))
    assert metrics["diverged"] == 1 and np.isnan(metrics["fitness"][1])
    assert 1 not in metrics["parents"] and metrics["best_index"] != 1
    assert np.isfinite(metrics["fitness_max"])
    assert bool(all_finite(state.learngenes).all())  # the NaN did not spread


def test_library_defaults_are_the_default_config():
    c = load_config("omniglot")
    assert EvolutionConfig(**c.evolution) == EvolutionConfig()
    assert c.evolution.to_dict() == dataclasses.asdict(EvolutionConfig())


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


def test_lineage_score_fixed_critics_and_the_final_choice(omniglot):
    evo = _tiny_evolution(omniglot, selection="score", fixed_critics=True, life_steps=0)
    key = jax.random.key(0)
    state = evo.init(key)
    genes = state.learngenes
    state, first = evo.generation(key, state)
    # ECO's score: fitness plus the decayed score of the parent (none in generation 1).
    np.testing.assert_allclose(first["scores"], first["fitness"], rtol=1e-6)
    inherited = np.asarray(first["scores"])[first["parents"]]
    np.testing.assert_allclose(state.scores, inherited, rtol=1e-6)
    # With no lifetime steps a learngene comes out as it went in; with fixed critics the
    # same learngenes get the same fitness in any generation.
    again, second = evo.generation(key, state.replace(learngenes=genes))
    np.testing.assert_allclose(second["fitness"], first["fitness"], atol=1e-6)
    expected = np.asarray(second["fitness"]) + 0.6 * np.asarray(state.scores)
    np.testing.assert_allclose(second["scores"], expected, rtol=1e-5)

    # The final choice: the best re-scored of the fittest candidates, or the fittest.
    index, info = evo.choose_final(key, again, candidates=2, episodes=3)
    assert info["candidates"] == list(np.argsort(-np.asarray(again.fitness))[:2])
    assert index == info["candidates"][int(np.argmax(info["rescored"]))]
    index, info = evo.choose_final(key, again, candidates=1, episodes=3)
    assert index == int(np.argmax(again.fitness)) and info["rule"] == "fittest"


def test_no_selection_control_chooses_its_final_learngene_at_random(omniglot):
    evo = _tiny_evolution(omniglot, selection="none")
    state = evo.init(jax.random.key(0))
    chosen = {
        evo.choose_final(jax.random.key(s), state, candidates=3, episodes=5)[0]
        for s in range(20)
    }
    assert chosen == {0, 1, 2}


def test_a_head_that_does_not_match_the_tasks_is_refused(omniglot):
    with pytest.raises(ValueError, match="life_model has a 5-class head.*life_way=50"):
        _tiny_evolution(omniglot, life_way=50)
