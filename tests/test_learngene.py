from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtl_jax import learngene as lg
from gtl_jax.models import build_model


def _variables(model, key, size=28):
    return model.init(key, jnp.zeros((2, size, size, 1)), train=False)


def _conv_outputs(model, variables, x):
    """Output of every ConvBN (after BN, before the nonlinearity), by layer name."""
    _, state = model.apply(
        variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    out = {}
    for node in model.conv_graph():
        module = state["intermediates"]
        for part in node.path:
            module = module[part]
        out[node.name] = module["__call__"][0]
    return out


@pytest.mark.parametrize("name", ["vgg11", "resnet12"])
def test_spec_k_and_share_near_twenty_percent(name):
    model = build_model(name, 5, width=0.25)
    spec = lg.make_spec(model, 0.45, 1)
    for layer, node in zip(spec.layers, model.conv_graph()):
        assert layer.k_out == round(0.45 * node.channels)
    assert spec.layers[0].k_in == 1
    share = lg.parameter_share(spec, _variables(model, jax.random.key(0))["params"])
    assert 0.18 < share["share_of_conv"] < 0.22
    assert share["share_of_network"] <= share["share_of_conv"]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio"):
        lg.make_spec(build_model("vgg11", 5, width=0.125), ratio, 1)


@pytest.mark.parametrize(
    "name,target_width", [("vgg11", 1 / 16), ("vgg11", 1 / 8), ("resnet12", 1 / 16)]
)
def test_inherited_circuit_is_closed(name, target_width):
    """With zeroed cross weights the gene channels of every layer depend on the learngene alone:
    descendants with different random rests, of the ancestor's width or wider, compute the same
    gene channels."""
    ancestor = build_model(name, 5, width=1 / 16)
    spec = lg.make_spec(ancestor, 0.45, 1)
    a_vars = _variables(ancestor, jax.random.key(0))
    # Make the running statistics non-trivial so that their inheritance matters.
    a_vars = {
        **a_vars,
        "batch_stats": jax.tree.map(
            lambda v: v + 0.3 * jax.random.uniform(jax.random.key(5), v.shape),
            a_vars["batch_stats"],
        ),
    }
    gene = lg.extract_learngene(spec, a_vars["params"], a_vars["batch_stats"])
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))

    def gene_outputs(model, key, zero_cross=True):
        fresh = _variables(model, key)
        params, stats = lg.insert_learngene(
            gene, fresh["params"], fresh["batch_stats"], zero_cross=zero_cross
        )
        out = _conv_outputs(model, {"params": params, "batch_stats": stats}, x)
        return {
            layer.name: out[layer.name][..., : layer.k_out] for layer in spec.layers
        }

    same_width = gene_outputs(ancestor, jax.random.key(1))
    wider = gene_outputs(build_model(name, 5, width=target_width), jax.random.key(3))
    for layer in spec.layers:
        np.testing.assert_allclose(
            wider[layer.name],
            same_width[layer.name],
            rtol=1e-4,
            atol=1e-5,
            err_msg=layer.name,
        )
    # Without zeroing, the random non-gene inputs leak into the circuit.
    leaky = gene_outputs(ancestor, jax.random.key(3), zero_cross=False)
    last = spec.layers[-1].name
    assert not np.allclose(leaky[last], same_width[last], atol=1e-3)


def test_extract_insert_roundtrip_and_rest_untouched():
    model = build_model("vgg11", 5, width=1 / 8)
    spec = lg.make_spec(model, 0.45, 1)
    a = _variables(model, jax.random.key(0))
    b = _variables(model, jax.random.key(1))
    gene = lg.extract_learngene(spec, a["params"], a["batch_stats"])
    params, stats = lg.insert_learngene(gene, b["params"], b["batch_stats"])
    again = lg.extract_learngene(spec, params, stats)
    chex.assert_trees_all_equal(gene, again)
    np.testing.assert_array_equal(
        params["head"]["kernel"], b["params"]["head"]["kernel"]
    )
    layer = spec.layers[3]
    kernel = params["stage3"]["conv2"]["conv"]["kernel"]
    assert layer.name == "stage3/conv2"
    np.testing.assert_array_equal(kernel[:, :, layer.k_in :, : layer.k_out], 0.0)
    np.testing.assert_array_equal(
        kernel[..., layer.k_out :],
        b["params"]["stage3"]["conv2"]["conv"]["kernel"][..., layer.k_out :],
    )
    assert (
        lg.learngene_size(gene) == lg.parameter_share(spec, a["params"])["gene_params"]
    )


def test_insert_is_jittable_and_vmappable():
    model = build_model("vgg11", 5, width=1 / 16)
    spec = lg.make_spec(model, 0.45, 1)
    keys = jax.random.split(jax.random.key(0), 3)
    variables = jax.vmap(lambda k: _variables(model, k))(keys)
    genes = jax.vmap(
        lambda v: lg.extract_learngene(spec, v["params"], v["batch_stats"])
    )(variables)
    params, _ = jax.jit(jax.vmap(lg.insert_learngene))(
        genes, variables["params"], variables["batch_stats"]
    )
    chex.assert_trees_all_equal_shapes(params, variables["params"])
    chex.assert_shape(params["stage1"]["conv1"]["conv"]["kernel"], (3, 3, 3, 1, 4))


def test_check_fits_lists_every_mismatch():
    spec = lg.make_spec(build_model("vgg16", 5, width=1 / 8), 0.45, 1)
    with pytest.raises(ValueError) as error:
        lg.check_fits(spec, build_model("vgg11", 5, width=1 / 8), 1)
    assert "stage1/conv2" in str(error.value) and "stage3/conv3" in str(error.value)
    with pytest.raises(ValueError, match="image channels"):
        lg.check_fits(spec, build_model("vgg16", 5, width=1 / 8), 3)
    narrow = lg.make_spec(build_model("vgg11", 5, width=1 / 8), 0.45, 1)
    lg.check_fits(narrow, build_model("vgg11", 5, width=1 / 4), 1)  # wider fits
    with pytest.raises(ValueError, match="channels <"):
        lg.check_fits(
            lg.make_spec(build_model("vgg11", 5, width=1), 0.45, 1),
            build_model("vgg11", 5, width=1 / 16),
            1,
        )


@pytest.mark.parametrize("name", ["vgg11", "resnet12"])
def test_closed_training_keeps_the_circuit_a_network_of_its_own(name):
    """Trained with ``closed_spec`` (as lifetimes with ``life_closed``), the network's gene
    channels compute what its extracted learngene computes in any other fresh network."""
    from gtl_jax.pretrain import PretrainConfig, pretrain

    model = build_model(name, 4, width=1 / 16)
    spec = lg.make_spec(model, 0.45, 1)
    images = jax.random.randint(jax.random.key(0), (4, 6, 28, 28, 1), 0, 256).astype(
        jnp.uint8
    )
    config = PretrainConfig(pretrain_steps=3, pretrain_batch=8, pretrain_lr=1e-2)
    state, _ = pretrain(model, jax.random.key(1), images, config, closed_spec=spec)
    for layer in spec.layers:
        path = tuple(layer.name.split("/")) + ("conv",)
        kernel = lg._get(state.params, path)["kernel"]
        assert not np.any(kernel[:, :, layer.k_in :, : layer.k_out]), layer.name
    gene = lg.extract_learngene(spec, state.params, state.batch_stats)
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
    trained = _conv_outputs(
        model, {"params": state.params, "batch_stats": state.batch_stats}, x
    )
    fresh = _variables(model, jax.random.key(9))
    params, stats = lg.insert_learngene(gene, fresh["params"], fresh["batch_stats"])
    inherited = _conv_outputs(model, {"params": params, "batch_stats": stats}, x)
    for layer in spec.layers:
        np.testing.assert_allclose(
            inherited[layer.name][..., : layer.k_out],
            trained[layer.name][..., : layer.k_out],
            rtol=1e-4,
            atol=1e-5,
            err_msg=layer.name,
        )


# --------------------------------------------------------------------------- ViT circuits


def _vit(width=1.0, **fields):
    return build_model("vit_fs", 5, width=width).clone(**fields)


def test_vit_spec_is_a_continuous_circuit_of_about_a_quarter():
    model = _vit()
    spec = lg.make_spec(model, 0.45, 1)
    assert (spec.k_heads, spec.head_dim, spec.k_dim) == (4, 16, 64)
    assert spec.k_mlp == round(0.45 * 256) and spec.depth == 6
    params = _variables(model, jax.random.key(0))["params"]
    gene = lg.extract_learngene(spec, params, {})
    # From the pixels to the class token: the embeddings, every block, the final norm.
    assert {"embed/patch", "embed", "block6/mlp/fc2", "norm"} <= set(gene)
    chex.assert_shape(gene["block1/attn/query"]["kernel"], (64, 4, 16))
    chex.assert_shape(gene["block1/attn/out"]["kernel"], (4, 16, 64))
    chex.assert_shape(gene["embed"]["pos"], (1, 50, 64))
    share = lg.parameter_share(spec, params)
    assert 0.2 < share["share_of_network"] < 0.26
    assert share["gene_params"] == lg.learngene_size(gene)
    assert lg.spec_from_json(spec.to_json()) == spec


@pytest.mark.parametrize("closed_norm", [True, False])
def test_vit_circuit_is_closed_with_its_own_norm_and_leaks_without(closed_norm):
    """Descendants with different random rests, of the ancestor's width, wider and deeper,
    compute the same gene dims at every block when their LayerNorms normalise the gene dims
    apart (``ViT.gene_dims``); with LayerNorm over all dims the rest leaks in
    (``benchmarks/vit_circuit_leak.py`` prints how much, block by block)."""
    ancestor = _vit()
    spec = lg.make_spec(ancestor, 0.45, 1)
    gene_dims = spec.k_dim if closed_norm else 0
    gene = lg.extract_learngene(
        spec, _variables(ancestor, jax.random.key(0))["params"], {}
    )
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))

    def stream(model, key):
        fresh = _variables(model, key)["params"]
        params, _ = lg.insert_learngene(gene, fresh, {})
        _, state = model.apply(
            {"params": params},
            x,
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        blocks = state["intermediates"]
        return [
            blocks[f"block{b}"]["__call__"][0][0][..., : spec.k_dim]
            for b in range(1, spec.depth + 1)
        ]

    reference = stream(_vit(gene_dims=gene_dims), jax.random.key(1))
    for target in (
        _vit(gene_dims=gene_dims),
        _vit(width=1.5, gene_dims=gene_dims),
        _vit(depth=8, gene_dims=gene_dims),
    ):
        other = stream(target, jax.random.key(3))
        leak = [
            float(jnp.linalg.norm(o - r) / jnp.linalg.norm(r))
            for o, r in zip(other, reference)
        ]
        if closed_norm:
            assert max(leak) < 1e-5, leak
        else:
            assert 0.1 < max(leak) < 1.0, leak


def test_vit_closed_training_keeps_the_cross_weights_zero():
    model = _vit(width=0.5)
    spec = lg.make_spec(model, 0.45, 1)
    params = _variables(model, jax.random.key(0))["params"]
    closed = lg.close_circuit(spec, params)
    query = closed["block2"]["attn"]["query"]["kernel"]
    assert not np.any(query[spec.k_dim :, : spec.k_heads])
    assert np.array_equal(
        query[: spec.k_dim], params["block2"]["attn"]["query"]["kernel"][: spec.k_dim]
    )
    out = closed["block2"]["attn"]["out"]["kernel"]
    assert not np.any(out[spec.k_heads :, :, : spec.k_dim])
    fc2 = closed["block2"]["mlp"]["fc2"]["kernel"]
    assert not np.any(fc2[spec.k_mlp :, : spec.k_dim])


def test_vit_learngene_that_does_not_fit_lists_every_mismatch():
    spec = lg.make_spec(_vit(), 0.45, 1)
    with pytest.raises(ValueError) as error:
        lg.check_fits(spec, _vit(width=0.25, depth=4), 1)
    message = str(error.value)
    for part in ("attn: target has 2 heads < gene 4", "mlp/fc1", "block5", "block6"):
        assert part in message
    with pytest.raises(ValueError, match="not a ViT"):
        lg.check_fits(spec, build_model("vgg11", 5, width=0.25), 1)
    with pytest.raises(ValueError, match="patch 4 vs the target's 7"):
        lg.check_fits(spec, _vit(patch=7), 1)
