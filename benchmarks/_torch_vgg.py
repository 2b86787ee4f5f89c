"""The PyTorch VGG that ``vs_pytorch.py`` times against the library's, and ``check``, which
compares the two before any timing. Not a benchmark.

The PyTorch network is exactly ``gtl_jax.models.VGG`` (``gtl_jax/models/vgg.py``,
``layers.py``), layer for layer:

- stages of 3x3 'SAME' convs without bias, each followed by BatchNorm (eps 1e-5; flax's
  momentum 0.9 on the running average is torch's ``momentum=0.1``) and ReLU; conv widths
  ``max(1, round(c * width))`` of ``VGG_STAGES``;
- 2x2 max-pooling after a stage unless the map is 2x2 or smaller (32x32: pools after stages
  1-4, none after stage 5);
- global average pooling, then one linear head with bias.

One difference that does not change the step's cost: torch updates the running variance with
the unbiased batch variance, flax with the biased one (``check`` compares them with that factor).
The library's CPU forms (``gtl_jax.models.layers``) are the same convs and pools computed
another way; torch runs plain ``Conv2d`` and ``max_pool2d``. The training step mirrors
``gtl_jax.population.train_step`` with ``make_optimizer("sgd", lr, weight_decay=wd)``: u8 NHWC
images scaled by 1/255, mean softmax cross-entropy, L2 weight decay added to the gradient of
every parameter, SGD momentum 0.9 (``torch.optim.SGD(momentum=0.9, weight_decay=wd)`` is the
same update as optax's ``chain(add_decayed_weights(wd), sgd(lr, momentum=0.9))``). This module
imports JAX only in ``check`` and ``jax_param_count``, so the torch workers do not load it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# A copy of gtl_jax.models.vgg.VGG_STAGES (so that the torch worker need not import JAX);
# ``check`` asserts that they are equal.
VGG_STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


def scaled(width: int, multiplier: float) -> int:
    """``gtl_jax.models.layers.scaled``: a layer width times a multiplier, at least 1."""
    return max(1, int(round(width * multiplier)))


class TorchVGG(nn.Module):
    """VGG-{11,13,16} with BatchNorm; ``forward`` takes f32 NCHW (any memory format)."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 11,
        width: float = 1.0,
        in_channels: int = 3,
        bn_momentum: float = 0.9,
    ):
        super().__init__()
        self.stages = nn.ModuleList()
        c_in = in_channels
        for widths in VGG_STAGES[depth]:
            layers = []
            for c in widths:
                c = scaled(c, width)
                conv = nn.Conv2d(c_in, c, 3, padding=1, bias=False)
                # flax: variance_scaling(2.0, "fan_in", "truncated_normal") (close enough for
                # speed; ``check`` copies the exact values).
                nn.init.trunc_normal_(
                    conv.weight, std=math.sqrt(2.0 / (9 * c_in)) / 0.8796
                )
                layers += [
                    conv,
                    nn.BatchNorm2d(c, eps=1e-5, momentum=1.0 - bn_momentum),
                    nn.ReLU(inplace=True),
                ]
                c_in = c
            self.stages.append(nn.Sequential(*layers))
        self.head = nn.Linear(c_in, num_classes)
        # flax Dense: lecun_normal kernel, zero bias.
        nn.init.trunc_normal_(self.head.weight, std=math.sqrt(1.0 / c_in) / 0.8796)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
            if x.shape[2] > 2 and x.shape[3] > 2:
                x = F.max_pool2d(x, 2, 2)
        return self.head(x.mean(dim=(2, 3)))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_input(x_u8_nhwc: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """u8 [B, H, W, C] -> f32 NCHW in [0, 1] (channels-last strides unless ``channels_last=False``)."""
    x = x_u8_nhwc.permute(0, 3, 1, 2)  # a view with channels-last strides
    if not channels_last:
        x = x.contiguous()
    return x.float().mul_(1.0 / 255.0)


def make_sgd(
    model: nn.Module,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x_u8_nhwc: torch.Tensor,
    y: torch.Tensor,
    channels_last: bool = True,
) -> torch.Tensor:
    """One SGD step on u8 NHWC images, like ``gtl_jax.population.train_step``; the loss before it."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(to_input(x_u8_nhwc, channels_last)), y)
    loss.backward()
    opt.step()
    return loss.detach()


def build(
    num_classes: int, width: float, depth: int = 11, channels_last: bool = True
) -> TorchVGG:
    model = TorchVGG(num_classes, depth, width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))


def load_jax_variables(model: TorchVGG, params, batch_stats) -> None:
    """Copies a flax VGG's ``params`` / ``batch_stats`` (nested dicts of arrays) into ``model``."""
    with torch.no_grad():
        for s, stage in enumerate(model.stages, start=1):
            convs = [m for m in stage if isinstance(m, nn.Conv2d)]
            bns = [m for m in stage if isinstance(m, nn.BatchNorm2d)]
            for i, (conv, bn) in enumerate(zip(convs, bns), start=1):
                p = params[f"stage{s}"][f"conv{i}"]
                st = batch_stats[f"stage{s}"][f"conv{i}"]["bn"]
                # HWIO -> OIHW
                conv.weight.copy_(_tensor(p["conv"]["kernel"]).permute(3, 2, 0, 1))
                bn.weight.copy_(_tensor(p["bn"]["scale"]))
                bn.bias.copy_(_tensor(p["bn"]["bias"]))
                bn.running_mean.copy_(_tensor(st["mean"]))
                bn.running_var.copy_(_tensor(st["var"]))
        model.head.weight.copy_(_tensor(params["head"]["kernel"]).T)
        model.head.bias.copy_(_tensor(params["head"]["bias"]))


def jax_param_count(num_classes: int, width: float, depth: int = 11) -> int:
    """Number of parameters of ``gtl_jax``'s VGG (imports JAX)."""
    import jax
    import jax.numpy as jnp

    from gtl_jax.models import build_model

    model = build_model(f"vgg{depth}", num_classes, width=width)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False
        )
    )
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))


def check(
    width: float = 0.25,
    num_classes: int = 5,
    batch: int = 8,
    image: int = 32,
    seed: int = 0,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
) -> dict:
    """Copies a JAX VGG11 into ``TorchVGG`` and compares it; raises AssertionError on a mismatch.

    Compared: parameter counts; logits in train mode (batch statistics) and eval mode
    (running statistics); the loss, the parameters and the running statistics after one SGD
    step of both libraries from the same parameters. Returns the largest differences.
    """
    import jax
    import jax.numpy as jnp

    from gtl_jax.models import vgg as jax_vgg
    from gtl_jax.population import (
        init_network,
        make_optimizer,
        predict,
    )
    from gtl_jax.population import (
        train_step as jax_train_step,
    )

    assert VGG_STAGES == jax_vgg.VGG_STAGES, "VGG_STAGES differ from gtl_jax's"
    torch.manual_seed(seed)
    model = build(num_classes, width)
    jmodel = jax_vgg.VGG(num_classes=num_classes, depth=11, width=width)
    tx = make_optimizer("sgd", lr, weight_decay=weight_decay)
    state = jax.jit(lambda k: init_network(jmodel, tx, k, (image, image, 3)))(
        jax.random.key(seed)
    )
    n_jax = sum(math.prod(a.shape) for a in jax.tree.leaves(state.params))
    n_torch = param_count(model)
    assert n_jax == n_torch, f"parameter counts differ: jax {n_jax}, torch {n_torch}"
    # Random running statistics, so that eval mode tests them.
    rng = np.random.default_rng(seed)
    batch_stats = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32),
        state.batch_stats,
    )
    state = state.replace(batch_stats=batch_stats)
    load_jax_variables(model, state.params, state.batch_stats)

    x = rng.integers(0, 256, (batch, image, image, 3), np.uint8)
    y = rng.integers(0, num_classes, (batch,)).astype(np.int32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()

    def diff(a, b) -> float:
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))

    out = {"params": n_jax}
    # Train mode: forward only, without touching the running statistics.
    logits_j, _ = jax.jit(
        lambda v, a: jmodel.apply(v, a, train=True, mutable=["batch_stats"])
    )(
        {"params": state.params, "batch_stats": state.batch_stats},
        jnp.asarray(x, jnp.float32) / 255.0,
    )
    model.eval()
    with torch.no_grad():
        logits_eval_t = model(to_input(xt)).numpy()
    model.train()
    logits_eval_j = jax.jit(lambda p, b, a: predict(jmodel, p, b, a))(
        state.params, state.batch_stats, jnp.asarray(x)
    )
    scale = float(np.max(np.abs(np.asarray(logits_j)))) or 1.0
    saved = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        logits_t = model(to_input(xt)).numpy()
    for b, s in zip(model.buffers(), saved):
        b.copy_(s)
    out["logits_train_max_abs_diff"] = diff(logits_j, logits_t)
    out["logits_eval_max_abs_diff"] = diff(logits_eval_j, logits_eval_t)
    out["logits_max_abs"] = scale

    # One SGD step in each library.
    new_state, loss_j = jax.jit(lambda s, a, b: jax_train_step(jmodel, tx, s, a, b))(
        state, jnp.asarray(x), jnp.asarray(y)
    )
    opt = make_sgd(model, lr, weight_decay=weight_decay)
    loss_t = train_step(model, opt, xt, yt)
    out["loss_abs_diff"] = abs(float(loss_j) - float(loss_t))
    after = TorchVGG(num_classes, 11, width).to(memory_format=torch.channels_last)
    load_jax_variables(after, new_state.params, new_state.batch_stats)
    out["params_after_step_max_abs_diff"] = max(
        diff(a.detach(), b.detach())
        for a, b in zip(after.parameters(), model.parameters())
    )
    # Running statistics: torch uses the unbiased variance (factor n / (n - 1)).
    mean_diff, var_diff = 0.0, 0.0
    old = TorchVGG(num_classes, 11, width)
    load_jax_variables(old, state.params, state.batch_stats)
    feature = image
    for s_new, s_old, s_t in zip(after.stages, old.stages, model.stages):
        n = batch * feature * feature
        for m_new, m_old, m_t in zip(s_new, s_old, s_t):
            if isinstance(m_new, nn.BatchNorm2d):
                mean_diff = max(mean_diff, diff(m_new.running_mean, m_t.running_mean))
                batch_var_j = (m_new.running_var - 0.9 * m_old.running_var) / 0.1
                batch_var_t = (m_t.running_var - 0.9 * m_old.running_var) / 0.1
                var_diff = max(var_diff, diff(batch_var_j * n / (n - 1), batch_var_t))
        if feature > 2:
            feature //= 2
    out["running_mean_max_abs_diff"] = mean_diff
    out["batch_var_max_abs_diff_unbiased"] = var_diff
    tol = 1e-4 * max(1.0, scale)
    assert out["logits_train_max_abs_diff"] < tol, out
    assert out["logits_eval_max_abs_diff"] < tol, out
    assert out["loss_abs_diff"] < 1e-4, out
    assert out["params_after_step_max_abs_diff"] < 1e-4, out
    assert mean_diff < 1e-4 and var_diff < 1e-3, out
    return out
