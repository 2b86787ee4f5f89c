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
import numpy as np
from flax import linen as nn

from gtl_jax.models.graph import ConvNode

Learngene = dict[str, dict[str, jax.Array]]
Variables = dict[str, Any]

# Tensors that are parameters (mutated by evolution); "mean" and "var" are statistics.
PARAMETER_KEYS = ("kernel", "scale", "bias")
STATISTIC_KEYS = ("mean", "var")


def parameter_keys(gene: dict[str, jax.Array]) -> tuple[str, ...]:
    """The parameter tensors of one entry of a learngene, in a fixed order: kernel, scale,
    bias (a conv layer's), then any other of its tensors by name (a ViT's ``cls``, ``pos``);
    never the statistics."""
    known = tuple(k for k in PARAMETER_KEYS if k in gene)
    other = sorted(k for k in gene if k not in PARAMETER_KEYS + STATISTIC_KEYS)
    return known + tuple(other)


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


# --------------------------------------------------------------------------- ViT circuits

# The ViT tensors whose weights carry non-gene units into gene units, by module suffix:
# (input axis, output axis) of the kernel. Zeroing kernel[k_in:, :k_out] on those axes (all of
# any other axis) closes the circuit but for LayerNorm (see ``ViTSpec``).
VIT_CROSS = {
    "attn/query": (0, 1),
    "attn/key": (0, 1),
    "attn/value": (0, 1),
    "attn/out": (0, 2),
    "mlp/fc1": (0, 1),
    "mlp/fc2": (0, 1),
}


@dataclasses.dataclass(frozen=True)
class GeneTensor:
    """One tensor of a ViT learngene: ``params[module][leaf]``, its leading ``block`` (one
    size per axis; None: the whole axis), and the kernel axes (input, output) along which
    non-gene inputs reach gene outputs (None: none)."""

    module: str
    leaf: str
    block: tuple[int | None, ...]
    cross: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """The learngene of a ViT: a continuous circuit from the pixels to the class token.

    The first ``k_heads`` heads of every attention layer, and with them the first
    ``k_dim = k_heads * head_dim`` dims of the residual stream (patch embedding, class token
    and position embeddings, attention outputs, MLP outputs, every LayerNorm's scale and
    bias), and the first ``k_mlp`` hidden units of every MLP. Inserted into a ViT with the
    same head dim and patch (as many or more heads, MLP units and blocks: wider or deeper,
    extra blocks random), the weights from non-gene units into gene units are zeroed
    (``VIT_CROSS``).

    The circuit is closed but for LayerNorm: its mean and variance span all dims, non-gene
    ones included, so a gene dim's normalised value depends on the rest of the host. The
    design accepts this leak (``circuit_leak`` measures it) rather than changing LayerNorm:
    a learngene then runs in any ViT unchanged.
    """

    k_heads: int
    head_dim: int
    k_mlp: int
    depth: int
    ratio: float
    in_channels: int
    patch: int

    kind = "vit"

    @property
    def k_dim(self) -> int:
        return self.k_heads * self.head_dim

    def tensors(self) -> tuple[GeneTensor, ...]:
        d, h, m = self.k_dim, self.k_heads, self.k_mlp
        out = [
            GeneTensor("embed/patch", "kernel", (None, None, None, d)),
            GeneTensor("embed/patch", "bias", (d,)),
            GeneTensor("embed", "cls", (None, None, d)),
            GeneTensor("embed", "pos", (None, None, d)),
        ]
        for b in range(1, self.depth + 1):
            block = f"block{b}"
            for norm in ("norm1", "norm2"):
                out += [
                    GeneTensor(f"{block}/{norm}", k, (d,)) for k in ("scale", "bias")
                ]
            for name in ("query", "key", "value"):
                module = f"{block}/attn/{name}"
                out += [
                    GeneTensor(
                        module, "kernel", (d, h, None), VIT_CROSS[f"attn/{name}"]
                    ),
                    GeneTensor(module, "bias", (h, None)),
                ]
            out += [
                GeneTensor(
                    f"{block}/attn/out", "kernel", (h, None, d), VIT_CROSS["attn/out"]
                ),
                GeneTensor(f"{block}/attn/out", "bias", (d,)),
                GeneTensor(f"{block}/mlp/fc1", "kernel", (d, m), VIT_CROSS["mlp/fc1"]),
                GeneTensor(f"{block}/mlp/fc1", "bias", (m,)),
                GeneTensor(f"{block}/mlp/fc2", "kernel", (m, d), VIT_CROSS["mlp/fc2"]),
                GeneTensor(f"{block}/mlp/fc2", "bias", (d,)),
            ]
        out += [GeneTensor("norm", k, (d,)) for k in ("scale", "bias")]
        return tuple(out)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.module for t in self.tensors()))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ViTSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def spec_from_json(data: dict[str, Any]) -> LearngeneSpec | ViTSpec:
    """The spec a learngene file's metadata holds (``spec.to_json()``), CNN or ViT."""
    if data.get("kind") == ViTSpec.kind:
        return ViTSpec.from_json(data)
    return LearngeneSpec.from_json(data)


def is_vit_learngene(learngene: Learngene) -> bool:
    """Whether a learngene is a ViT's (it has the patch embedding) rather than a CNN's."""
    return "embed/patch" in learngene


def _block_index(block: tuple[int | None, ...]) -> tuple[slice, ...]:
    return tuple(slice(None) if k is None else slice(0, k) for k in block)


def _extract_vit(spec: ViTSpec, params: Variables) -> Learngene:
    learngene: Learngene = {}
    for t in spec.tensors():
        tensor = _get(params, _layer_path(t.module))[t.leaf]
        learngene.setdefault(t.module, {})[t.leaf] = tensor[_block_index(t.block)]
    return learngene


def _cross_index(shape, gene_shape, cross) -> tuple[slice, ...]:
    """The region of a kernel from non-gene inputs into gene outputs."""
    index = [slice(None)] * len(shape)
    index[cross[0]] = slice(gene_shape[cross[0]], None)
    index[cross[1]] = slice(0, gene_shape[cross[1]])
    return tuple(index)


def _insert_vit(
    learngene: Learngene, params: Variables, *, zero_cross: bool
) -> Variables:
    for module, gene in learngene.items():
        path = _layer_path(module)
        suffix = "/".join(path[-2:])
        target = dict(_get(params, path))
        for leaf, value in gene.items():
            tensor = target[leaf]
            if tensor.ndim != value.ndim or any(
                g > t for g, t in zip(value.shape, tensor.shape)
            ):
                raise ValueError(
                    f"{module}/{leaf}: gene {value.shape} does not fit {tensor.shape}"
                )
            if zero_cross and leaf == "kernel" and suffix in VIT_CROSS:
                index = _cross_index(tensor.shape, value.shape, VIT_CROSS[suffix])
                tensor = tensor.at[index].set(0.0)
            block = tuple(slice(0, g) for g in value.shape)
            target[leaf] = tensor.at[block].set(value.astype(tensor.dtype))
        params = _replace(params, path, lambda _, new=target: new)
    return params


def _close_vit(spec: ViTSpec, params: Variables) -> Variables:
    for t in spec.tensors():
        if t.cross is None:
            continue
        path = _layer_path(t.module)
        module = _get(params, path)
        kernel = module[t.leaf]
        gene_shape = tuple(n if k is None else k for n, k in zip(kernel.shape, t.block))
        index = _cross_index(kernel.shape, gene_shape, t.cross)
        params = _replace(
            params,
            path,
            lambda m, leaf=t.leaf, i=index: {**m, leaf: m[leaf].at[i].set(0.0)},
        )
    return params


def _vit_problems(spec: ViTSpec, model: nn.Module, in_channels: int) -> list[str]:
    shape = getattr(model, "shape", None)
    if shape is None or not hasattr(model, "patch"):
        return [
            f"the learngene is a ViT's; the target {type(model).__name__} is not a ViT"
        ]
    problems = []
    if in_channels != spec.in_channels:
        problems.append(
            f"image channels: the learngene's {spec.in_channels}, the target's {in_channels}"
        )
    if model.patch != spec.patch:
        problems.append(
            f"embed/patch: patch {spec.patch} vs the target's {model.patch}"
        )
    if shape.head_dim != spec.head_dim:
        problems.append(
            f"attn: head dim {spec.head_dim} vs the target's {shape.head_dim}"
        )
    if shape.heads < spec.k_heads:
        problems.append(f"attn: target has {shape.heads} heads < gene {spec.k_heads}")
    if shape.mlp < spec.k_mlp:
        problems.append(f"mlp/fc1: target has {shape.mlp} units < gene {spec.k_mlp}")
    for b in range(shape.depth + 1, spec.depth + 1):
        problems.append(f"block{b}: no block {b} in the {shape.depth}-block target")
    return problems


def _vit_share(spec: ViTSpec, params: Variables) -> dict[str, float]:
    gene = 0
    for t in spec.tensors():
        tensor = _get(params, _layer_path(t.module))[t.leaf]
        gene += int(
            np.prod([n if k is None else k for n, k in zip(tensor.shape, t.block)])
        )
    circuit = sum(
        leaf.size
        for name in spec.names
        for leaf in jax.tree.leaves(
            {
                k: v
                for k, v in _get(params, _layer_path(name)).items()
                if not isinstance(v, dict)
            }
        )
    )
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    return {
        "gene_params": int(gene),
        "conv_params": int(circuit),
        "total_params": int(total),
        "share_of_conv": gene / circuit,
        "share_of_network": gene / total,
    }


def gene_channels(channels: int, ratio: float) -> int:
    """``k = round(r * C)``, at least 1."""
    return max(1, int(round(ratio * channels)))


def make_spec(
    model: nn.Module, ratio: float, in_channels: int
) -> LearngeneSpec | ViTSpec:
    """The learngene spec of a model at ratio ``r``.

    Args:
      model: the network, e.g. ``VGG(num_classes=5, width=0.25)`` (a CNN: anything with
        ``conv_graph()``) or a ViT (``gtl_jax.models.ViT``).
      ratio: r in (0, 1], the share of each layer's output channels (a ViT's heads and MLP
        units) the learngene owns.
      in_channels: image channels (the first layer takes all of them).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"learngene ratio r must be in (0, 1], got {ratio}")
    if not hasattr(model, "conv_graph"):  # a ViT
        shape = model.shape
        return ViTSpec(
            k_heads=gene_channels(shape.heads, ratio),
            head_dim=shape.head_dim,
            k_mlp=gene_channels(shape.mlp, ratio),
            depth=shape.depth,
            ratio=float(ratio),
            in_channels=int(in_channels),
            patch=int(model.patch),
        )
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
    if isinstance(spec, ViTSpec):
        return _extract_vit(spec, params)
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

    A ViT's learngene (``ViTSpec``) goes into the leading block of each of its tensors in a
    ViT with as many or more heads, MLP units and blocks; its cross weights are the kernels
    of ``VIT_CROSS``.
    """
    if is_vit_learngene(learngene):
        return _insert_vit(learngene, params, zero_cross=zero_cross), batch_stats
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
    if isinstance(spec, ViTSpec):
        return _close_vit(spec, params)
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
    convs of the stage with its resolution and the extra convs are random. A ViT's learngene
    goes into a ViT with the same head dim and patch and as many or more heads, MLP units and
    blocks.
    """
    if isinstance(spec, ViTSpec):
        problems = _vit_problems(spec, model, in_channels)
        if problems:
            raise ValueError(
                "learngene does not fit the target network:\n  " + "\n  ".join(problems)
            )
        return
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

    For a ViT, ``conv_params`` counts the circuit's modules whole (every block, the
    embeddings, the LayerNorms; not the head).
    """
    if isinstance(spec, ViTSpec):
        return _vit_share(spec, params)
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
    """Number of learnable parameters in a learngene (kernels, scales, biases, embeddings)."""
    return sum(
        int(gene[key].size)
        for gene in learngene.values()
        for key in parameter_keys(gene)
    )
