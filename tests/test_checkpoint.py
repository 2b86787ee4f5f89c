from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gtl_jax
from gtl_jax.checkpoint import (
    LIBRARY_VERSION,
    LearngeneFileError,
    load_learngene,
    save_learngene,
)
from gtl_jax.learngene import LearngeneSpec, extract_learngene, make_spec
from gtl_jax.models import build_model


@pytest.fixture(scope="module")
def gene_and_meta():
    model = build_model("vgg11", 5, width=1 / 16)
    spec = make_spec(model, 0.45, 1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    gene = extract_learngene(spec, variables["params"], variables["batch_stats"])
    return gene, {
        "model": {"name": "vgg11", "width": 1 / 16},
        "spec": spec.to_json(),
        "generation": 3,
    }


def test_roundtrip(tmp_path, gene_and_meta):
    gene, meta = gene_and_meta
    save_learngene(tmp_path / "lg", gene, meta)
    loaded, loaded_meta = load_learngene(tmp_path / "lg")
    jax.tree.map(np.testing.assert_array_equal, loaded, gene)
    assert (
        loaded_meta["generation"] == 3
        and loaded_meta["library_version"] == LIBRARY_VERSION
    )
    assert LearngeneSpec.from_json(loaded_meta["spec"]) == LearngeneSpec.from_json(
        meta["spec"]
    )
    assert LIBRARY_VERSION == gtl_jax.__version__


def test_missing_and_bad_metadata(tmp_path, gene_and_meta):
    with pytest.raises(LearngeneFileError, match="metadata.json"):
        load_learngene(tmp_path / "nothing")
    gene, meta = gene_and_meta
    path = save_learngene(tmp_path / "lg", gene, meta)
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(LearngeneFileError, match="not valid JSON"):
        load_learngene(path)
    (path / "metadata.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LearngeneFileError, match="format"):
        load_learngene(path)


def test_edited_spec_is_caught(tmp_path, gene_and_meta):
    gene, meta = gene_and_meta
    path = save_learngene(tmp_path / "lg", gene, meta)
    data = json.loads((path / "metadata.json").read_text())
    data["spec"]["layers"][1]["k_out"] += 1
    (path / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(LearngeneFileError, match="stage2/conv1"):
        load_learngene(path)


def test_damaged_arrays_are_a_clear_error(tmp_path, gene_and_meta):
    gene, meta = gene_and_meta
    path = save_learngene(tmp_path / "lg", gene, meta)
    files = sorted(
        p for p in (path / "arrays").rglob("*") if p.is_file() and p.stat().st_size
    )
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    with pytest.raises(LearngeneFileError, match=str(path.name)):
        load_learngene(path)
