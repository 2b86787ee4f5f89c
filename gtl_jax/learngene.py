"""Learngenes: the channel circuit of a network, extracted from it and inserted into fresh ones.

The learngene's form and its inheritance. In every conv layer with C output channels the
learngene owns the first ``k = round(r * C)``: the kernel block from the gene channels of the
layer's input to its own gene channels, and the BatchNorm scale, bias, running mean and running
variance of those channels. It is a closed sub-network from image to features; the head is never
part of it.

A learngene is a plain dict ``{layer_name: {"kernel", "scale", "bias", "mean", "var"}}`` of
arrays, so it is a pytree that vmaps, mutates and checkpoints like any other. Shapes are static:
extraction and insertion are jittable slices and ``.at[].set``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import linen as nn

from gtl_jax.models.graph import ConvNode

Learngene = dict[str, dict[str, jax.Array]]
Variables = dict[str, Any]

# Tensors that are parameters (mutated by evolution); "mean" and "var" are statistics.
PARAMETER_KEYS = ("kernel", "scale", "bias")


@dataclasses.dataclass(frozen=True)
class GeneLayer:
    """The gene block of one conv layer: ``kernel[:, :, :k_in, :k_out]`` and ``k_out`` BN channels."""

    name: str
    k_in: int
    k_out: int
    stage: int


@dataclasses.dataclass(frozen=True)
class LearngeneSpec:
    """Which block of which layer a learngene holds; static, hashable."""

    layers: tuple[GeneLayer, ...]
    ratio: float
    in_channels: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "in_channels": self.in_channels,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LearngeneSpec:
        return cls(
            layers=tuple(GeneLayer(**layer) for layer in data["layers"]),
            ratio=float(data["ratio"]),
            in_channels=int(data["in_channels"]),
        )


def gene_channels(channels: int, ratio: float) -> int:
    """``k = round(r * C)``, at least 1."""
    return max(1, int(round(ratio * channels)))


def make_spec(model: nn.Module, ratio: float, in_channels: int) -> LearngeneSpec:
    """The learngene spec of a model (anything with ``conv_graph()``) at ratio ``r``.

    Args:
      model: the network, e.g. ``VGG(num_classes=5, width=0.25)``.
      ratio: r in (0, 1], the share of each layer's output channels the learngene owns.
      in_channels: image channels (the first layer takes all of them).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"learngene ratio r must be in (0, 1], got {ratio}")
    graph: tuple[ConvNode, ...] = model.conv_graph()
    k = {node.name: gene_channels(node.channels, ratio) for node in graph}
    layers = tuple(
        GeneLayer(
            node.name,
            in_channels if node.input is None else k[node.input],
            k[node.name],
            node.stage,
        )
        for node in graph
    )
    return LearngeneSpec(layers, float(ratio), int(in_channels))


def _get(tree: Variables, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _layer_path(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


def extract_learngene(
    spec: LearngeneSpec, params: Variables, batch_stats: Variables
) -> Learngene:
    """Cuts the learngene out of one network's ``params`` and ``batch_stats``."""
    learngene = {}
    for layer in spec.layers:
        path = _layer_path(layer.name)
        conv, bn = _get(params, path + ("conv",)), _get(params, path + ("bn",))
        stats = _get(batch_stats, path + ("bn",))
        k_in, k_out = layer.k_in, layer.k_out
        learngene[layer.name] = {
            "kernel": conv["kernel"][:, :, :k_in, :k_out],
            "scale": bn["scale"][:k_out],
            "bias": bn["bias"][:k_out],
            "mean": stats["mean"][:k_out],
            "var": stats["var"][:k_out],
        }
    return learngene


def _replace(tree: Variables, path: tuple[str, ...], fn) -> Variables:
    """A copy of a nested dict with ``fn`` applied at ``path`` (only the path is copied)."""
    if not path:
        return fn(tree)
    head, rest = path[0], path[1:]
    return {**tree, head: _replace(tree[head], rest, fn)}


def _write_kernel(
    name: str, kernel: jax.Array, gene_kernel: jax.Array, zero_cross: bool
) -> jax.Array:
    kh, kw, k_in, k_out = gene_kernel.shape
    if kernel.shape[:2] != (kh, kw):
        raise ValueError(f"kernel size of {name} differs: {kernel.shape} vs {(kh, kw)}")
    if zero_cross:
        kernel = kernel.at[:, :, k_in:, :k_out].set(0.0)
    return kernel.at[:, :, :k_in, :k_out].set(gene_kernel.astype(kernel.dtype))


def _write_bn(bn: Variables, gene: dict[str, jax.Array]) -> Variables:
    """Writes the gene's entries of a BN collection (scale/bias, or mean/var) into its first k."""
    return {
        key: value.at[: gene[key].shape[0]].set(gene[key]) if key in gene else value
        for key, value in bn.items()
    }


def insert_learngene(
    learngene: Learngene,
    params: Variables,
    batch_stats: Variables,
    *,
    layer_map: dict[str, str] | None = None,
    zero_cross: bool = True,
) -> tuple[Variables, Variables]:
    """Writes a learngene into a network's first channels.

    The network may be the learngene's own architecture or a wider one: each gene block goes into
    the leading ``[:k_in, :k_out]`` slice of the target layer, sized by the gene's own shapes.

    Args:
      learngene: ``{layer: {kernel: f32[kh, kw, k_in, k_out], scale, bias, mean, var: f32[k_out]}}``.
      params, batch_stats: the fresh network's variables (not modified).
      layer_map: learngene layer name -> target layer name (for deeper targets); identity if None.
      zero_cross: zero the weights from non-gene inputs into gene outputs, so that the inherited
        circuit computes exactly what it computed in its ancestor.

    Returns:
      ``(params, batch_stats)`` with the learngene written in.
    """
    for name, gene in learngene.items():
        target = _layer_path((layer_map or {}).get(name, name))
        conv = _get(params, target + ("conv",))
        kernel = _write_kernel(name, conv["kernel"], gene["kernel"], zero_cross)
        params = _replace(
            params, target + ("conv",), lambda c, k=kernel: {**c, "kernel": k}
        )
        params = _replace(params, target + ("bn",), lambda bn, g=gene: _write_bn(bn, g))
        batch_stats = _replace(
            batch_stats, target + ("bn",), lambda bn, g=gene: _write_bn(bn, g)
        )
    return params, batch_stats


def close_circuit(spec: LearngeneSpec, params: Variables) -> Variables:
    """``params`` with the weights from non-gene inputs into gene outputs set to zero.

    Applied after every lifetime step (``EvolutionConfig.life_closed``), it keeps the gene
    channels a closed sub-network during life: what the circuit computes in its host is what
    it computes on its own, so extraction cuts nothing it relied on.
    """
    for layer in spec.layers:
        path = _layer_path(layer.name) + ("conv",)
        params = _replace(
            params,
            path,
            lambda c, gene=layer: {
                **c,
                "kernel": c["kernel"].at[:, :, gene.k_in :, : gene.k_out].set(0.0),
            },
        )
    return params


def check_fits(
    spec: LearngeneSpec,
    model: nn.Module,
    in_channels: int,
    *,
    layer_map: dict[str, str] | None = None,
) -> None:
    """Raises ValueError, listing every mismatch, if a learngene of ``spec`` cannot go into ``model``.

    Accepts a target of the same architecture, a wider one (at least as many channels per
    layer) or a deeper one that has every gene layer's name: in VGG, ``stage{s}/conv{i}`` of a
    VGG11 gene goes to the same conv of a VGG13 or VGG16, so each gene layer sits in the first
    convs of the stage with its resolution and the extra convs are random.
    """
    if in_channels != spec.in_channels:
        raise ValueError(
            f"the learngene was made for {spec.in_channels} image channels, the target has "
            f"{in_channels}"
        )
    layer_map = layer_map or {}
    target = {node.name: node for node in model.conv_graph()}
    problems = []
    for layer in spec.layers:
        name = layer_map.get(layer.name, layer.name)
        if name not in target:
            problems.append(f"{layer.name}: no layer {name!r} in the target")
        else:
            node = target[name]
            inputs = in_channels if node.input is None else target[node.input].channels
            if node.channels < layer.k_out:
                problems.append(
                    f"{layer.name}: target has {node.channels} channels < gene {layer.k_out}"
                )
            if inputs < layer.k_in:
                problems.append(
                    f"{layer.name}: target layer reads {inputs} channels < gene {layer.k_in}"
                )
    if problems:
        raise ValueError(
            "learngene does not fit the target network:\n  "
            + "\n  ".join(problems)
            + f"\ntarget layers: {', '.join(target)}"
        )


def parameter_share(spec: LearngeneSpec, params: Variables) -> dict[str, float]:
    """Fraction of parameters the learngene holds: of the conv layers and of the whole network.

    Counts learnable parameters (conv kernels, BN scale and bias; not running statistics).

    Args:
      spec: the learngene's layers and channel counts (``make_spec``).
      params: the ``params`` collection of a network the spec fits (e.g. the descendant's),
        arrays or ``jax.ShapeDtypeStruct`` (only shapes are read).

    Returns:
      A dict:

      - ``gene_params`` (int): learnable parameters of the learngene in that network (each
        layer's ``kh * kw * k_in * k_out`` kernel block plus ``k_out`` BN scales and biases).
      - ``conv_params`` (int): learnable parameters of the spec's conv layers, whole (kernels,
        BN scales and biases).
      - ``total_params`` (int): every learnable parameter of the network, head included.
      - ``share_of_conv`` (float): ``gene_params / conv_params``, in (0, 1].
      - ``share_of_network`` (float): ``gene_params / total_params``, the share reported in
        tables and learngene files ("params transferred").
    """
    gene = conv = 0
    for layer in spec.layers:
        module = _get(params, _layer_path(layer.name))
        kh, kw = module["conv"]["kernel"].shape[:2]
        gene += kh * kw * layer.k_in * layer.k_out + 2 * layer.k_out
        conv += sum(leaf.size for leaf in jax.tree.leaves(module))
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    return {
        "gene_params": int(gene),
        "conv_params": int(conv),
        "total_params": int(total),
        "share_of_conv": gene / conv,
        "share_of_network": gene / total,
    }


def learngene_size(learngene: Learngene) -> int:
    """Number of learnable parameters in a learngene (kernels, scales, biases)."""
    return sum(
        int(gene[key].size) for gene in learngene.values() for key in PARAMETER_KEYS
    )
