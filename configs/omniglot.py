"""GTL on Omniglot with a small VGG11: the default of ``python -m gtl_jax.evolve``,
``python -m gtl_jax.inherit`` and ``python -m gtl_jax.study``.

Run:
  python -m gtl_jax.evolve                          # one evolution and its table, runs/omniglot
  python -m gtl_jax.evolve --config=configs/omniglot.py:smoke  # a check of the whole pipeline
  python -m gtl_jax.evolve --config.seed=3 --config.evolution.generations=3  # other values
  python -m gtl_jax.inherit                         # one learngene against every baseline
  python -m gtl_jax.study                           # 3 seeds, controls, baselines: the evidence

Default: 9 VGG11 (width 1/4, 28x28) networks evolve for 8 generations: each host learns a
50-way task of the meta-train classes (100 SGD steps, the circuit kept closed), its learngene is
judged by 4 critics fine-tuned on the same 5-way 1-shot meta-validation episodes every
generation, tournaments of 3 select, and the best of the 3 fittest of the last generation,
re-scored on 100 meta-validation episodes, is the learngene (r = 0.45, 20.5% of the
parameters). Chosen on the meta-validation classes (docs/results/tuning.md).

Measured on 2 CPU cores (README, "Results"): evolve takes about 3 minutes with a warm
compilation cache and its learngene beats scratch by about 24 points at 5-way 1-shot (78.8
against 55.0); the study (3 seeds, 8 methods, 6 settings) takes about 35 minutes and gives
+23.1 ± 2.1 points over scratch at 5-way 1-shot and +21.1 ± 0.6 at 20-way 1-shot, over seeds.

Every section is its dataclass's defaults (``dataclasses.asdict``): the values above are
written once, in ``gtl_jax.config`` (DataConfig, ModelConfig, EvaluationConfig,
SuiteConfig, ExecutionConfig), ``gtl_jax.evolution.EvolutionConfig`` and
``gtl_jax.descendants.Recipe``; only the smoke variant sets values here.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from gtl_jax.config import (
    DataConfig,
    EvaluationConfig,
    ExecutionConfig,
    ModelConfig,
    SuiteConfig,
)
from gtl_jax.descendants import Recipe
from gtl_jax.evolution import EvolutionConfig

# smoke: the whole pipeline at toy sizes; vit: the default with a ViT (vit_fs) instead of
# VGG11; vit_smoke: both.
VARIANTS = ("smoke", "vit", "vit_smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    asdict = dataclasses.asdict
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = asdict(DataConfig())
    c.model = asdict(ModelConfig())
    c.evolution = asdict(EvolutionConfig())
    c.descendants = asdict(Recipe())
    c.evaluation = asdict(EvaluationConfig())
    # The evidence suite (python -m gtl_jax.inherit) and the study (python -m gtl_jax.study).
    c.suite = asdict(SuiteConfig())
    c.execution = asdict(ExecutionConfig())

    if arg not in (None, "", *VARIANTS):
        raise ValueError(
            f"unknown variant {arg!r} of the omniglot config (known: {', '.join(VARIANTS)})"
        )
    vit = arg in ("vit", "vit_smoke")
    if vit:
        # A ViT for 28x28 images: 8 heads of 16 dims, 6 blocks, 7x7 patches of 4 pixels;
        # its learngene is 4 heads (64 dims) and 115 MLP units of each block, 24% of the
        # network. Heur-LG transfers conv layers, which a ViT has none of.
        c.model.name = "vit_fs"
        c.model.width = 1.0
        # A ViT learns almost nothing in a 100-step lifetime with the CNNs' SGD (50-way loss
        # 4.4 -> 3.9, chance 3.9; its learngene lost to scratch on the meta-val classes):
        # Adam does (4.4 -> 1.2 by generation 5). Chosen on the meta-val classes.
        c.evolution.life_optimizer = "adam"
        c.evolution.life_lr = 1e-3
        c.evolution.life_weight_decay = 0.0
        c.suite.methods = (
            "learngene,scratch,pretrain-full,pretrain-circuit,proto-frozen"
        )
    if arg in ("smoke", "vit_smoke"):
        c.model.width = 0.5 if vit else 0.0625
        c.evolution.pop_size = 3
        c.evolution.generations = 2
        c.evolution.life_steps = 3
        c.evolution.num_critics = 1
        c.evolution.critic_steps = 2
        c.evolution.rescore_episodes = 2
        c.evaluation.eval_episodes = 3
        c.descendants.steps = 2
        c.descendants.eval_every = 1
        c.suite.inherit_episodes = 3
        c.suite.pretrain_steps = 3
        c.suite.seeds = "0,1"
        c.suite.study_episodes = 2
        # At toy sizes a worker process costs more than it saves.
        c.execution.workers = 1
    return c
