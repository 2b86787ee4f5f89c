"""Hostile inputs: each gives one clear error naming the field or path, never a traceback
from inside JAX, and leaves the workdir as it was. docs/hostile_inputs.md lists them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax.checkpoint import LearngeneFileError, load_learngene, save_learngene
from gtl_jax.data.omniglot import BACKGROUND_FILE, EVALUATION_FILE, find_omniglot_dir
from gtl_jax.evolve import main
from gtl_jax.learngene import check_fits, extract_learngene, make_spec
from gtl_jax.models import build_model

SMOKE = ["--config=configs/omniglot.py:smoke", "--quiet"]

# --------------------------------------------------------------------------- workdir


def snapshot(workdir) -> dict[str, str]:
    """Every file of a workdir and the hash of its contents."""
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workdir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A smoke run stopped after generation 1: config, metrics, checkpoints, learngene."""
    workdir = tmp_path_factory.mktemp("run") / "w"
    flags = ["--workdir", str(workdir), "--config.evolution.generations=1"]
    assert main(SMOKE + flags) == 0
    return workdir


@pytest.fixture
def workdir(finished_run, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(finished_run, copy)
    return copy


def refused(argv, capsys) -> str:
    """Runs the CLI, expects exit code 2, returns stderr (a one-line error, no traceback)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


# --------------------------------------------------------------------------- configs

IMPOSSIBLE_CONFIGS = [
    (
        [
            "--config.evolution.pop_size=10",
            "--config.evolution.tournament_size=3",
        ],
        "evolution.pop_size",
    ),
    (["--config.evolution.tournament_size=0"], "evolution.tournament_size"),
    (["--config.model.ratio=0"], "model.ratio"),
    (["--config.model.ratio=1.5"], "model.ratio"),
    (["--config.model.ratio=-0.2"], "model.ratio"),
    (["--config.model.width=0"], "model.width"),
    (["--config.evolution.generations=0"], "evolution.generations"),
    (["--config.evolution.life_steps=-1"], "evolution.life_steps"),
    (["--config.evolution.critic_steps=-2"], "evolution.critic_steps"),
    (["--config.descendants.steps=-3"], "descendants.steps"),
    (["--config.evolution.life_batch=0"], "evolution.life_batch"),
    (["--config.evolution.mutation_sigma=-0.1"], "evolution.mutation_sigma"),
    (["--config.evolution.mutation_rate=1.5"], "evolution.mutation_rate"),
    (["--config.evolution.life_genes=lr,dropout"], "evolution.life_genes"),
    (["--config.evolution.life_gene_spread=0.5"], "evolution.life_gene_spread"),
    (["--config.evolution.life_way=10000"], "evolution.life_way"),
    (["--config.evolution.critic_way=1000"], "evolution.critic_way"),
    (["--config.evaluation.eval_way=700"], "evaluation.eval_way"),
    (["--config.evolution.critic_query=100"], "evolution.critic_query"),
    (["--config.evaluation.eval_query=30"], "evaluation.eval_query"),
    (["--config.evaluation.eval_shots=0"], "evaluation.eval_shots"),
    (["--config.evaluation.eval_shots=1,x"], "evaluation.eval_shots"),
    (["--config.data.dataset=no_such_dataset"], "data.dataset"),
    (["--config.model.name=vgg12"], "model.name"),
    (["--config.descendants.head=linear"], "descendants.head"),
    (["--config.descendants.optimizer=rmsprop"], "descendants.optimizer"),
    (["--config.execution.strategy=pmap"], "execution.strategy"),
    (["--config.execution.processes=0"], "execution.processes"),
    (["--config.execution.workers=-1"], "execution.workers"),
]


@pytest.mark.parametrize(
    "flags,field", IMPOSSIBLE_CONFIGS, ids=[" ".join(f) for f, _ in IMPOSSIBLE_CONFIGS]
)
@pytest.mark.slow
def test_impossible_config_on_resume_names_the_field_and_keeps_the_workdir(
    flags, field, workdir, capsys
):
    before = snapshot(workdir)
    err = refused(SMOKE + ["--workdir", str(workdir)] + flags, capsys)
    assert f"config field {field}=" in err
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "flags,flag",
    [
        (["--config.evolution.pop_size=many"], "--config.evolution.pop_size"),
        (["--config.evolution.zero_cross=maybe"], "--config.evolution.zero_cross"),
        (["--config.evolution.pop_sze=3"], "evolution.pop_sze"),
        (["--pop_size", "3"], "pop_size"),
    ],
    ids=["pop_size", "zero_cross", "misspelled", "flat"],
)
def test_unparsable_or_unknown_flag_names_it(flags, flag, tmp_path, capsys):
    err = refused(SMOKE + ["--workdir", str(tmp_path / "w")] + flags, capsys)
    assert flag in err and err.count("\n") == 1
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_another_config_in_the_workdir_is_refused(workdir, capsys):
    before = snapshot(workdir)
    flags = ["--workdir", str(workdir), "--config.evolution.life_lr=0.3"]
    err = refused(SMOKE + flags, capsys)
    assert "evolution.life_lr" in err and str(workdir) in err
    assert snapshot(workdir) == before


# --------------------------------------------------------------------------- data and state


@pytest.mark.slow
def test_corrupt_dataset_on_resume_names_the_file(workdir, tmp_path, capsys):
    real = find_omniglot_dir()
    data = tmp_path / "data"
    data.mkdir()
    for name in (EVALUATION_FILE, "alphabets.csv"):
        os.symlink(real / name, data / name)
    raw = bytearray((real / BACKGROUND_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (data / BACKGROUND_FILE).write_bytes(bytes(raw))
    before = snapshot(workdir)
    flags = ["--workdir", str(workdir), f"--config.data.data_dir={data}"]
    err = refused(SMOKE + flags, capsys)
    assert "sha256" in err and str(data / BACKGROUND_FILE) in err
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_damaged_checkpoint_names_it_and_keeps_the_workdir(workdir, capsys):
    step = workdir / "checkpoints" / "1"
    files = [p for p in step.rglob("*") if p.is_file() and p.stat().st_size]
    for path in files:  # every file cut to a third: arrays and metadata alike
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    before = snapshot(workdir)
    err = refused(SMOKE + ["--workdir", str(workdir)], capsys)
    assert f"cannot restore checkpoint {step}" in err
    assert snapshot(workdir) == before


# --------------------------------------------------------------------------- learngene files


@pytest.fixture(scope="module")
def gene_file(tmp_path_factory):
    """A valid learngene file of a VGG11 x1/16 (r = 0.45) and the model it came from."""
    model = build_model("vgg11", 5, width=1 / 16)
    spec = make_spec(model, 0.45, 1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    gene = extract_learngene(spec, variables["params"], variables["batch_stats"])
    meta = {"model": {"name": "vgg11", "width": 1 / 16}, "spec": spec.to_json()}
    path = save_learngene(tmp_path_factory.mktemp("gene") / "lg", gene, meta)
    return path, gene, meta


@pytest.fixture
def gene_copy(gene_file, tmp_path):
    return shutil.copytree(gene_file[0], tmp_path / "lg")


def _edit_metadata(path, fn):
    meta = json.loads((path / "metadata.json").read_text())
    fn(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


def _truncate_metadata(path):
    text = (path / "metadata.json").read_text()
    (path / "metadata.json").write_text(text[: len(text) // 2])


def _truncate_arrays(path):
    for p in (path / "arrays").rglob("*"):
        if p.is_file() and p.stat().st_size > 64:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _arrays_of_another_ratio(path, tmp_path):
    # The arrays of an r = 0.25 learngene under the metadata of the r = 0.45 one.
    model = build_model("vgg11", 5, width=1 / 16)
    spec = make_spec(model, 0.25, 1)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), train=False)
    gene = extract_learngene(spec, variables["params"], variables["batch_stats"])
    other = save_learngene(
        tmp_path / "other", gene, {"model": {}, "spec": spec.to_json()}
    )
    shutil.rmtree(path / "arrays")
    shutil.copytree(other / "arrays", path / "arrays")


def _edit_shapes(meta):
    name = sorted(meta["shapes"])[0]
    meta["shapes"][name]["kernel"][-1] += 2


def _nan_values(path, tmp_path):
    gene, meta = load_learngene(path)
    layer = sorted(gene)[0]
    gene[layer]["kernel"] = np.asarray(gene[layer]["kernel"]).copy()
    gene[layer]["kernel"].flat[0] = np.nan
    shutil.rmtree(path)
    save_learngene(path, gene, {k: meta[k] for k in ("model", "spec")})


def _interrupted_swap(path, tmp_path):
    # A kill between the two renames of save_learngene: the old file is at <path>.old.
    path.rename(path.with_name(path.name + ".old"))


BAD_LEARNGENE_FILES = {
    "missing metadata.json": (
        lambda p, t: (p / "metadata.json").unlink(),
        "not a learngene file",
    ),
    "truncated metadata.json": (lambda p, t: _truncate_metadata(p), "not valid JSON"),
    "truncated arrays": (lambda p, t: _truncate_arrays(p), "cannot read the arrays"),
    "truncated manifest": (
        lambda p, t: _truncate(p / "arrays" / "manifest.ocdbt"),
        "(damaged or truncated): ValueError: DATA_LOSS: ",
    ),
    "arrays of another learngene": (
        _arrays_of_another_ratio,
        "stage1/conv1/kernel: the arrays hold shape (3, 3, 1, 1), the metadata says "
        "(3, 3, 1, 2)",
    ),
    "edited spec (k_out)": (
        lambda p, t: _edit_metadata(
            p, lambda m: m["spec"]["layers"][1].__setitem__("k_out", 99)
        ),
        "stage2/conv1: kernel",
    ),
    "edited shapes": (
        lambda p, t: _edit_metadata(p, _edit_shapes),
        "stage1/conv1/kernel: the arrays hold shape (3, 3, 1, 2), the metadata says "
        "(3, 3, 1, 4)",
    ),
    "non-finite values": (_nan_values, "non-finite values"),
    "another format": (
        lambda p, t: _edit_metadata(
            p, lambda m: m.__setitem__("format", "gtl_jax.learngene/0")
        ),
        "format 'gtl_jax.learngene/0' is not 'gtl_jax.learngene/1'",
    ),
    "missing metadata field": (
        lambda p, t: _edit_metadata(p, lambda m: m.pop("spec")),
        "metadata field 'spec' is missing",
    ),
    "interrupted write": (_interrupted_swap, ".old"),
}


@pytest.mark.parametrize("case", list(BAD_LEARNGENE_FILES))
def test_bad_learngene_file_is_one_clear_error_naming_it(case, gene_copy, tmp_path):
    damage, message = BAD_LEARNGENE_FILES[case]
    damage(gene_copy, tmp_path)
    with pytest.raises(LearngeneFileError) as info:
        load_learngene(gene_copy)
    assert message in str(info.value)
    assert str(gene_copy) in str(info.value)
    # Not TensorStore's spec (a 1,200-character JSON line) after Orbax's reason.
    assert "tensorstore_spec" not in str(info.value)
    if "cannot read the arrays" in message:
        assert len(str(info.value)) < 600 and "\n" not in str(info.value)


def test_another_library_version_of_the_same_format_loads(gene_copy, gene_file):
    # The format string is the compatibility contract; the version is recorded, not checked.
    _edit_metadata(gene_copy, lambda m: m.__setitem__("library_version", "9.9.9"))
    gene, meta = load_learngene(gene_copy)
    assert meta["library_version"] == "9.9.9"
    jax.tree.map(np.testing.assert_array_equal, gene, gene_file[1])


@pytest.mark.parametrize(
    "source_width,target,in_channels,message",
    [
        (1 / 16, ("resnet12", 1.0), 1, "no layer 'stage5/conv1' in the target"),
        (1 / 4, ("vgg11", 1 / 16), 1, "stage1/conv1: target has 4 channels < gene 7"),
        (1 / 16, ("vgg11", 1 / 16), 3, "made for 1 image channels, the target has 3"),
    ],
    ids=["resnet12", "narrower", "channels"],
)
def test_learngene_of_another_architecture_does_not_fit(
    source_width, target, in_channels, message
):
    spec = make_spec(build_model("vgg11", 5, width=source_width), 0.45, 1)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_fits(spec, build_model(target[0], 5, width=target[1]), in_channels)
