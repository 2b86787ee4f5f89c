"""The evidence suite: every method on tiny shapes, fixed episodes, other shapes, clear errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax import inherit, suite
from gtl_jax import learngene as lg
from gtl_jax.checkpoint import save_learngene
from gtl_jax.experiment import METHODS, fixed_episodes, load_config
from gtl_jax.models import build_model


def _variables(model, key):
    return model.init(key, jnp.zeros((1, 28, 28, 1)), train=False)


def _write_learngene(path, name="vgg11", width=1 / 16):
    model = build_model(name, 5, width=width)
    spec = lg.make_spec(model, 0.45, 1)
    v = _variables(model, jax.random.key(11))
    gene = lg.extract_learngene(spec, v["params"], v["batch_stats"])
    save_learngene(
        path,
        gene,
        {
            "model": {"name": name, "width": width},
            "spec": spec.to_json(),
            "cost": {
                "what": "evolution",
                "lifetime_steps": 6,
                "critic_steps": 4,
                "seconds": 1.0,
            },
            "history": [
                {
                    "generation": 1,
                    "fitness_max": 0.3,
                    "fitness_mean": 0.2,
                    "fitness_min": 0.1,
                }
            ],
        },
    )
    return gene, spec


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory):
    """The whole suite (every method, two heads) on tiny shapes, run twice in one workdir:
    the second run reuses the cached pretrained network."""
    tmp = tmp_path_factory.mktemp("inherit")
    _write_learngene(tmp / "learngene")
    c = load_config("omniglot:smoke")
    c.model.name, c.model.width = "vgg11", 1 / 16
    c.suite.inherit_episodes = 4
    c.evaluation.eval_query, c.evaluation.eval_shots = 3, "1"
    c.execution.workers = 1
    first = inherit.run(c, tmp / "learngene", tmp / "a", quiet=True)
    # The second run: the cached pretrained network, and two worker processes.
    c.execution.workers = 2
    second = inherit.run(c, tmp / "learngene", tmp / "a", quiet=True)
    c.execution.workers = 1
    return c, first, second, tmp


@pytest.mark.slow
def test_every_method_and_head_is_reported(suite_runs):
    c, first, _, tmp = suite_runs
    got = {(r["method"], r["head"], r["shot"]) for r in first["rows"]}
    for method in METHODS[:-1]:
        for head in ("random", "prototype"):
            assert (method, head, 1) in got
    assert ("proto-frozen", "frozen features", 1) in got
    assert len(got) == len(first["rows"]) == 11
    for r in first["rows"]:
        assert 0.0 <= r["accuracy"][0] <= 1.0 and r["accuracy"][1] >= 0.0
        assert len(r["per_episode"]) == c.suite.inherit_episodes
        steps = 0 if r["method"] == "proto-frozen" else c.descendants.steps
        assert r["curve_steps"][-1] == steps
        # The curve's last point is the reported accuracy.
        assert r["curve"][-1] == pytest.approx(r["accuracy"][0], abs=1e-6)
    lines = (tmp / "a" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(first["rows"])
    for name in (
        "results.md",
        "results.json",
        "curves.png",
        "share.png",
        "fitness.png",
    ):
        assert (tmp / "a" / name).stat().st_size > 0
    assert "| pretrain-circuit | prototype |" in first["table"]


@pytest.mark.slow
def test_shares_and_costs(suite_runs):
    _, first, _, _ = suite_runs
    share = {r["method"]: r["params_transferred"] for r in first["rows"]}
    assert share["scratch"] == 0.0
    assert share["learngene"] == pytest.approx(share["pretrain-circuit"])
    assert 0.15 < share["learngene"] < 0.25
    assert (
        share["pretrain-full"] > 0.95
        and share["proto-frozen"] == share["pretrain-full"]
    )
    assert share["pretrain-circuit"] < share["heur-lg"] < share["pretrain-full"]
    cost = {r["method"]: r["cost"] for r in first["rows"]}
    assert cost["learngene"]["lifetime_steps"] == 6
    assert cost["pretrain-full"]["steps"] == 3 and cost["scratch"] == {"what": "none"}


@pytest.mark.slow
def test_proto_frozen_is_the_pretrained_networks_instinct(suite_runs):
    _, first, _, _ = suite_runs
    rows = {(r["method"], r["head"], r["shot"]): r for r in first["rows"]}
    frozen = rows["proto-frozen", "frozen features", 1]
    full = rows["pretrain-full", "prototype", 1]
    assert frozen["accuracy"] == pytest.approx(full["instinct"])
    # A prototype head starts where the nearest-prototype readout is.
    assert full["curve"][0] == pytest.approx(full["instinct"][0], abs=1e-6)


@pytest.mark.slow
def test_episodes_identical_across_methods_and_runs(suite_runs):
    _, first, second, _ = suite_runs
    prints = {r["episode_fingerprint"] for r in first["rows"] + second["rows"]}
    assert len(prints) == 1
    # Same seed, same episodes, same keys, same (cached) pretrained network: the second run,
    # whose jobs ran in two worker processes, reproduces every number, and its costs are
    # those recorded when pre-training ran.
    assert (first["workers"], second["workers"]) == (1, 2)
    for a, b in zip(first["rows"], second["rows"]):
        assert (a["method"], a["head"], a["shot"]) == (
            b["method"],
            b["head"],
            b["shot"],
        )
        assert a["per_episode"] == b["per_episode"]
        assert a["cost"] == b["cost"]


def test_fixed_episodes_depend_on_the_seed_only(omniglot):
    images = jnp.asarray(omniglot["test"].images[:20])

    def fingerprint(seed):
        episodes, _ = fixed_episodes(
            jax.random.key(seed), images, episodes=2, n_way=5, k_shot=1, n_query=2
        )
        return suite.episode_fingerprint(episodes)

    assert fingerprint(3) == fingerprint(3) != fingerprint(4)


def test_heur_spec_takes_the_last_layers_whole():
    model = build_model("vgg11", 5, width=1 / 16)
    spec = suite.heur_spec(model, 1, 3)
    graph = model.conv_graph()
    assert spec.names == tuple(n.name for n in graph[-3:])
    channels = {n.name: n.channels for n in graph}
    for layer, node in zip(spec.layers, graph[-3:]):
        assert layer.k_out == node.channels and layer.k_in == channels[node.input]


@pytest.mark.parametrize(
    "name,width", [("vgg13", 1 / 16), ("vgg16", 1 / 16), ("vgg11", 1 / 32 * 1.5)]
)
def test_deeper_or_other_width_descendants_inherit(name, width):
    """A VGG11 x1/16 learngene goes into VGG13/VGG16 (gene layers keep their names, the extra
    convs stay as initialised) and into a narrower x0.75 network (k <= C still)."""
    ancestor = build_model("vgg11", 5, width=1 / 16)
    spec = lg.make_spec(ancestor, 0.45, 1)
    v = _variables(ancestor, jax.random.key(0))
    gene = lg.extract_learngene(spec, v["params"], v["batch_stats"])
    target = build_model(name, 5, width=width)
    lg.check_fits(spec, target, 1)
    fresh = _variables(target, jax.random.key(1))
    params, stats = lg.insert_learngene(gene, fresh["params"], fresh["batch_stats"])
    np.testing.assert_equal(
        jax.tree.map(np.asarray, lg.extract_learngene(spec, params, stats)),
        jax.tree.map(np.asarray, gene),
    )
    gene_layers = set(spec.names)
    for node in target.conv_graph():
        if node.name not in gene_layers:
            s, c = node.name.split("/")
            np.testing.assert_array_equal(
                params[s][c]["conv"]["kernel"], fresh["params"][s][c]["conv"]["kernel"]
            )
    logits = target.apply(
        {"params": params, "batch_stats": stats}, jnp.ones((2, 28, 28, 1)), train=False
    )
    assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())


def test_shallower_or_narrower_target_is_refused():
    spec = lg.make_spec(build_model("vgg13", 5, width=1 / 8), 0.45, 1)
    with pytest.raises(ValueError, match="stage1/conv2: no layer"):
        lg.check_fits(spec, build_model("vgg11", 5, width=1 / 8), 1)
    spec = lg.make_spec(build_model("vgg11", 5, width=1 / 4), 0.45, 1)
    with pytest.raises(ValueError, match="channels < gene"):
        lg.check_fits(spec, build_model("vgg11", 5, width=1 / 16), 1)


def test_learngene_of_another_architecture_is_a_clear_error(tmp_path, capsys):
    _write_learngene(tmp_path / "resnet_gene", name="resnet12", width=1 / 16)
    code = inherit.main(
        [
            "--config=configs/omniglot.py:smoke",
            "--learngene",
            str(tmp_path / "resnet_gene"),
            "--config.model.name=vgg11",
            "--workdir",
            str(tmp_path / "w"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot be inherited by vgg11" in err and "stage1/shortcut: no layer" in err
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "results.md").exists()


def test_missing_learngene_and_bad_fields(tmp_path, capsys):
    assert inherit.main(["--learngene", str(tmp_path / "nothing"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no learngene file at {tmp_path / 'nothing'}: ")
    assert f"run python -m gtl_jax.evolve --workdir={tmp_path} first" in err
    assert len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()  # a folder, but not a learngene file
    assert inherit.main(["--learngene", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "metadata.json not found" in capsys.readouterr().err
    _write_learngene(tmp_path / "g")
    for flags, field in (
        (["--config.suite.methods=learngene,magic"], "suite.methods"),
        (["--config.suite.heads=clever"], "suite.heads"),
        (["--config.suite.eval_split=train"], "suite.eval_split"),
        (["--config.suite.heur_layers=99"], "suite.heur_layers"),
    ):
        argv = ["--config=omniglot:smoke", "--learngene", str(tmp_path / "g")]
        code = inherit.main(
            [*argv, "--workdir", str(tmp_path / "w"), "--quiet", *flags]
        )
        assert code == 2
        assert f"config field {field}=" in capsys.readouterr().err


@pytest.mark.slow
def test_results_jsonl_rows_are_json(suite_runs):
    _, _, _, tmp = suite_runs
    for line in (tmp / "a" / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert {"method", "head", "accuracy", "instinct", "cost"} <= set(row)


def test_pretrained_cache_key_holds_what_changes_the_weights(tmp_path):
    """Another image pool of the same shape (another npz, data_dir or split), precision,
    pre-training field or closed circuit is another network; ratio without a closed circuit,
    zero_cross and the evaluation fields are the same one."""
    c = load_config("omniglot:smoke")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 28, 28, 1), dtype=np.uint8)
    base, key = suite.pretrained_cache(c, images, tmp_path)
    assert key["images"] == suite.images_digest(images.copy())

    def path(images=images, closed=None, **fields):
        other = load_config("omniglot:smoke")
        for name, value in fields.items():  # "section__field": value
            section, _, field = name.rpartition("__")
            (other[section] if section else other)[field] = value
        return suite.pretrained_cache(other, images, tmp_path, closed)[0]

    assert path() == base
    for same in (
        {"model__ratio": 0.3},
        {"evolution__zero_cross": False},
        {
            "evaluation__eval_way": 20,
            "suite__inherit_episodes": 9,
            "suite__methods": "scratch",
        },
    ):
        assert path(**same) == base, same
    other_pixels = images.copy()
    other_pixels[0, 0, 0, 0, 0] ^= 1
    m = c.model
    spec = lg.make_spec(build_model("vgg11", 5, width=m.width), m.ratio, 1)
    for changed in (
        {"images": other_pixels},
        {"images": images[:5]},
        {"model__precision": "bfloat16"},
        {"suite__pretrain_lr": 3e-3},
        {"suite__pretrain_steps": 4},
        {"suite__pretrain_batch": 32},
        {"suite__pretrain_weight_decay": 1e-4},
        {"seed": 1},
        {"evolution__augment": "crop_flip"},
        {"model__width": 0.125},
        {"model__name": "vgg13"},
        {"closed": spec},
    ):
        assert path(**changed) != base, changed
    previous = jax.config.jax_threefry_partitionable
    try:
        jax.config.update("jax_threefry_partitionable", not previous)
        assert path() != base
    finally:
        jax.config.update("jax_threefry_partitionable", previous)


def _ten_class_npz(tmp_path, split: str):
    rng = np.random.default_rng(0)
    path = tmp_path / "ten.npz"
    np.savez(path, images=rng.integers(0, 256, (10, 4, 28, 28), dtype=np.uint8))
    (tmp_path / "ten_splits.txt").write_text(split)
    return path


@pytest.mark.slow
def test_npz_with_only_a_test_split_is_evaluated_on_all_its_classes(tmp_path, capsys):
    """A 10-class npz whose split lists only test: learngene and scratch need no other
    split, so the suite runs 10-way on all its classes; a pre-trained method needs train
    and the error names it; the evolution needs all three."""
    data = _ten_class_npz(tmp_path, "test: 0-9\n")
    _write_learngene(tmp_path / "g")
    argv = [
        "--config=omniglot:smoke",
        "--learngene",
        str(tmp_path / "g"),
        "--config.data.dataset=npz",
        f"--config.data.data_dir={data}",
        "--config.evaluation.eval_way=10",
        "--config.evaluation.eval_shots=1",
        "--config.evaluation.eval_query=3",
        "--config.suite.inherit_episodes=2",
        "--config.suite.heads=random",
        "--quiet",
    ]
    work = tmp_path / "w"
    assert (
        inherit.main(
            [*argv, "--config.suite.methods=learngene,scratch", f"--workdir={work}"]
        )
        == 0
    )
    rows = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    assert {(r["method"], r["way"], r["split"]) for r in rows} == {
        ("learngene", 10, "test"),
        ("scratch", 10, "test"),
    }
    capsys.readouterr()

    code = inherit.main(
        [
            *argv,
            "--config.suite.methods=learngene,pretrain-full",
            "--workdir",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err == (
        f"error: dataset 'npz' at {data} has no 'train' split, which the pre-training of "
        "pretrain-full needs (it has: test)\n"
    )

    code = inherit.main(
        [*argv, "--config.suite.eval_split=val", "--workdir", str(tmp_path / "v")]
    )
    assert code == 2
    assert (
        "has no 'val' split, which the evaluation (eval_split)"
        in capsys.readouterr().err
    )

    from gtl_jax import evolve

    code = evolve.main(
        ["--config=omniglot:smoke", "--quiet", "--config.data.dataset=npz",
         f"--config.data.data_dir={data}", "--workdir", str(tmp_path / "e")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "has no 'train' split, which the evolution: lifetimes, critics, final table"
        in err
    )
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_inherit_checks_only_the_fields_it_uses(tmp_path, capsys):
    """A user's npz whose train/val/test splits have 20/5/5 classes: inherit runs with
    the default evolution.life_way=50 (a field only the evolution uses), and still names
    evaluation.eval_way when the test split has too few classes for it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "thirty.npz"
    np.savez(data, images=rng.integers(0, 256, (30, 4, 28, 28), dtype=np.uint8))
    (tmp_path / "thirty_splits.txt").write_text(
        "train: 0-19\nval: 20-24\ntest: 25-29\n"
    )
    _write_learngene(tmp_path / "g")
    argv = [
        "--config=omniglot:smoke",
        "--learngene",
        str(tmp_path / "g"),
        "--config.data.dataset=npz",
        f"--config.data.data_dir={data}",
        "--config.evolution.life_way=50",
        "--config.evaluation.eval_shots=1",
        "--config.evaluation.eval_query=3",
        "--config.suite.inherit_episodes=2",
        "--config.suite.heads=random",
        "--config.suite.methods=learngene,scratch",
        "--quiet",
    ]
    assert inherit.main([*argv, f"--workdir={tmp_path / 'w'}"]) == 0
    capsys.readouterr()
    wide = [*argv, "--config.evaluation.eval_way=6", f"--workdir={tmp_path / 'x'}"]
    assert inherit.main(wide) == 2
    err = capsys.readouterr().err
    assert "evaluation.eval_way=6" in err and "life_way" not in err, err
