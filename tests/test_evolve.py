"""The command line end to end on real Omniglot (smoke sizes), resume, and its errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from gtl_jax import inherit
from gtl_jax.checkpoint import load_learngene
from gtl_jax.cli import field_help
from gtl_jax.evolution import EvolutionConfig
from gtl_jax.evolve import main
from gtl_jax.experiment import (
    CPU_XLA_FLAGS,
    cpu_xla_flags,
    flatten,
    load_config,
)

SMOKE = ["--config=configs/omniglot.py:smoke", "--quiet"]


def test_help_lists_every_config_field_once_with_its_default_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    fields = flatten(load_config("omniglot").to_dict())
    helps = field_help()  # the help metadata beside each field of the dataclasses
    assert set(fields) == set(helps) and all(helps.values())
    for path, value in fields.items():
        assert text.count(f"--config.{path} ") == 1, path
        assert f"--config.{path} (default: {value!r})\n      {helps[path]}" in text
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


def test_missing_gtl_data_dir_is_named_as_such(capsys, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_dir"
    monkeypatch.setenv("GTL_DATA_DIR", str(missing))
    assert main(SMOKE + ["--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: GTL_DATA_DIR={str(missing)!r} is not a folder (it does not exist): "
        "set it to the folder that holds the datasets, or unset it\n"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_smoke_run_then_resume_gives_the_same_learngene(tmp_path, capsys):
    # Uninterrupted: 2 generations.
    full = tmp_path / "full"
    assert main(SMOKE + ["--workdir", str(full)]) == 0
    out = capsys.readouterr().out
    assert "| learngene |" in out and "| scratch |" in out
    # --quiet drops the progress bars only: one log line per generation stays.
    assert [
        x.split(":")[0] for x in out.splitlines() if x.startswith("generation ")
    ] == [
        "generation 1/2",
        "generation 2/2",
    ]
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


@pytest.mark.slow
def test_the_pure_generation_runs_the_command_and_resumes(tmp_path, capsys):
    # execution.strategy=vmap: every generation is the jitted pure Evolution.step (the
    # GPU/TPU form) and descendants are one vmapped program; a run killed after generation
    # 1 resumes to the learngene of an uninterrupted one. With life genes (lr, momentum):
    # they are in the checkpointed state, the metrics and the learngene file.
    vmap = SMOKE + ["--config.execution.strategy=vmap"]
    vmap += ["--config.evolution.life_genes=lr,momentum"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(vmap + ["--workdir", str(full)]) == 0
    assert "| learngene |" in capsys.readouterr().out
    assert (
        main(vmap + ["--workdir", str(part), "--config.evolution.generations=1"]) == 0
    )
    assert main(vmap + ["--workdir", str(part)]) == 0
    gene, meta = load_learngene(full / "learngene")
    resumed, _ = load_learngene(part / "learngene")
    jax.tree.map(np.testing.assert_array_equal, resumed, gene)
    metrics = [
        json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["generation"] for m in metrics] == [1, 2] and meta["generation"] == 2
    assert all(len(m["fitness"]) == 3 and len(m["parents"]) == 3 for m in metrics)
    assert np.isnan(metrics[0]["response"]) and np.isfinite(metrics[1]["response"])
    assert all(np.isfinite(m["selection_differential"]) for m in metrics)
    resumed_metrics = [
        json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()
    ]
    for m, n in zip(metrics, resumed_metrics, strict=True):
        assert len(m["life_genes/lr"]) == 3 and max(m["life_genes/momentum"]) < 1
        assert m["life_genes/lr"] == n["life_genes/lr"]  # resumed bit-identically
    _, resumed_meta = load_learngene(part / "learngene")
    chosen = meta["choice"]["chosen"]
    assert meta["life_genes"]["lr"] == metrics[-1]["life_genes/lr"][chosen]
    assert resumed_meta["life_genes"] == meta["life_genes"]
    assert (full / "life_genes.png").is_file()


@pytest.mark.slow
def test_a_vit_evolves_and_its_learngene_is_inherited(tmp_path, capsys):
    # The whole pipeline with a ViT (vit_fs x1/2 on 28x28 Omniglot, 7x7 patches of 4):
    # its learngene (a ViTSpec) is written, read back and inherited by the final table.
    flags = [
        "--config=omniglot:vit_smoke",
        "--quiet",
        "--config.evolution.generations=1",
    ]
    assert main(flags + ["--workdir", str(tmp_path)]) == 0
    assert "| learngene |" in capsys.readouterr().out
    gene, meta = load_learngene(tmp_path / "learngene")
    assert meta["spec"]["kind"] == "vit" and "block6/attn/query" in gene
    assert 0.2 < meta["parameter_share"]["share_of_network"] < 0.3
    # The evidence suite with a ViT also draws where its descendants look.
    inherited = tmp_path / "inherit"
    code = inherit.main(
        [
            "--config=omniglot:vit_smoke",
            "--quiet",
            "--learngene",
            str(tmp_path / "learngene"),
            "--workdir",
            str(inherited),
            # pretrain-circuit: a ViT's pre-trained baselines need no conv layers.
            "--config.suite.methods=learngene,pretrain-circuit",
            "--config.suite.heads=random",
        ]
    )
    assert code == 0
    assert (inherited / "attention.png").stat().st_size > 0
    focus = json.loads((inherited / "results.json").read_text())["attention"]
    assert set(focus) == {"learngene", "pretrain-circuit"}
    for f in focus.values():
        assert 0 < f["foreground_share"] <= 1 and 0 < f["foreground_area"] <= 1
        assert f["images"] == 3 * 5 * 15  # inherit_episodes x (5-way x 15 queries)
    assert "share on foreground" in (inherited / "results.md").read_text()


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


@pytest.mark.parametrize("variant", ["smoke", "vit_smoke"])
def test_results_table_names_frozen_bn_only_for_a_batch_norm_model(variant):
    """A ViT has no BatchNorm: its table does not say "frozen BN statistics"."""
    from gtl_jax.evolve import results_table  # noqa: PLC0415

    c = load_config(f"omniglot:{variant}")
    r = {"instinct": (0.3, 0.01), "accuracy": (0.4, 0.02)}
    results = {
        f"{shot}-shot/{m}": r for shot in (1, 5) for m in ("learngene", "scratch")
    }
    table = results_table(c, results, {"share_of_network": 0.2})
    assert ("frozen BN" in table) == (variant == "smoke"), table.splitlines()[0]
