"""GTL on Omniglot with a small VGG11: the default of ``python -m gtl_jax.evolve``,
``python -m gtl_jax.inherit`` and ``python -m gtl_jax.study``.

Run:
  python -m gtl_jax.evolve                          # one evolution and its table, runs/omniglot
  python -m gtl_jax.evolve --config omniglot:smoke  # a seconds-scale check of the whole pipeline
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
"""

from __future__ import annotations

import ml_collections

# One line per field: what `--help` prints for the flag of the same name.
FIELD_HELP = {
    "dataset": "dataset name: omniglot, cifar_fs, mini_imagenet or npz",
    "data_dir": "dataset folder; default: $GTL_DATA_DIR or ../shared/data/<dataset>",
    "image_size": "images are resized to image_size x image_size",
    "model": "architecture: vgg11, vgg13, vgg16 or resnet12",
    "width": "width multiplier of every conv layer",
    "precision": "computation dtype: float32, or bfloat16 (mixed precision for GPU/TPU: "
    "bfloat16 convs, float32 parameters, BatchNorm statistics and loss; no faster on CPU)",
    "ratio": "learngene ratio r: each conv layer's gene owns round(r * C) output channels",
    "zero_cross": "zero the weights from non-gene inputs into gene outputs at insertion",
    "pop_size": "population size P (divisible by tournament_size)",
    "tournament_size": "tournament group size k",
    "generations": "number of generations G",
    "life_way": "classes per lifetime task (N_life)",
    "life_steps": "SGD steps of lifetime learning (S_life)",
    "life_batch": "lifetime batch size",
    "life_lr": "lifetime SGD learning rate",
    "life_momentum": "lifetime SGD momentum",
    "life_weight_decay": "lifetime weight decay",
    "augment": "lifetime augmentation, on device: none or crop_flip (pad S//8, crop, flip)",
    "num_critics": "critic networks per individual (C)",
    "critic_way": "ways of critic episodes (meta-validation classes)",
    "critic_shot": "shots of critic episodes",
    "critic_query": "queries per class of critic episodes",
    "critic_steps": "fine-tuning steps of each critic (S_critic)",
    "life_closed": "keep the weights from non-gene into gene channels at zero during "
    "lifetime learning (the circuit a host trains is the one it passes on)",
    "fixed_critics": "critics fine-tune on the same meta-validation episodes every "
    "generation (fitness comparable across generations)",
    "selection": "what tournaments rank: tournament (fitness), score (ECO's lineage score) "
    "or none (parents drawn at random: the no-selection control)",
    "score_decay": "lineage score: fitness plus this times the parent's score",
    "final_candidates": "the fittest members of the last generation re-scored before the "
    "final learngene is chosen",
    "rescore_episodes": "meta-validation episodes the final candidates are re-scored on "
    "(0: the fittest is chosen)",
    "seeds": "study: comma-separated seeds, one evolution (and one control) each",
    "study_ways": "study: comma-separated ways of the evaluation settings",
    "study_episodes": "study: fixed episodes of a 5-way setting (N-way: 5/N as many, the "
    "same number of queries)",
    "study_methods": "study: comma-separated methods (learngene, no-selection, "
    "untrained-circuit, pretrain-circuit-eq, pretrain-closed-eq, scratch, pretrain-full)",
    "transfer_dataset": "study: another dataset the learngenes are evaluated on, 5-way "
    "(digits, or empty for none)",
    "mutation_sigma": "mutation noise, relative to each tensor's std",
    "mutation_rate": "probability that a tensor is mutated",
    "eval_episodes": "test episodes per shot setting (meta-test classes)",
    "eval_way": "ways of test episodes",
    "eval_shots": "comma-separated shot settings of test episodes, e.g. 1,5",
    "eval_query": "queries per class of test episodes",
    "eval_seed": "seed of the test episodes and descendant keys (same for every method)",
    "head": "descendant head init: random, zero or prototype",
    "optimizer": "descendant (and critic) optimizer: adam or sgd",
    "learning_rate": "descendant (and critic) learning rate",
    "steps": "descendant fine-tuning steps S_d",
    "eval_every": "learning-curve resolution in steps",
    "batch_norm": "descendant BatchNorm while fine-tuning: batch (support statistics, "
    "running ones updated) or frozen (inherited running statistics)",
    "methods": "inherit: comma-separated methods (learngene, scratch, pretrain-full, "
    "pretrain-circuit, heur-lg, proto-frozen)",
    "heads": "inherit: comma-separated descendant heads to compare (random, zero, prototype)",
    "inherit_episodes": "inherit: test episodes per shot setting (at least 600 for the tables)",
    "eval_split": "inherit: split the episodes come from: test (report) or val (tuning)",
    "heur_layers": "inherit: Heur-LG transfers the last this many conv layers",
    "pretrain_steps": "inherit: Adam steps of the pretrained baseline network",
    "pretrain_batch": "inherit: batch size of pre-training (all meta-train classes)",
    "pretrain_lr": "inherit: Adam learning rate of pre-training",
    "pretrain_weight_decay": "inherit: L2 weight decay of pre-training",
    "workers": "worker processes, one pinned per core: the evolution's members split between "
    "them (one process, one device, loop strategy) and descendant jobs (final table, inherit) "
    "(0: one per CPU core on CPU, 1 on GPU/TPU)",
    "strategy": "population execution: auto (vmap on GPU/TPU, loop on CPU), vmap or loop",
    "distributed": "call jax.distributed.initialize() to join the processes of several hosts",
    "processes": "CPU: run as this many joined processes on this machine, one per core, each "
    "pinned; the population is sharded over them (pop_size must be divisible by it)",
    "seed": "seed of the evolution",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "omniglot"
    c.data_dir = ""
    c.image_size = 28
    c.model = "vgg11"
    c.width = 0.25
    c.ratio = 0.45
    c.zero_cross = True
    c.precision = "float32"

    c.pop_size = 9
    c.tournament_size = 3
    c.generations = 8
    c.life_way = 50
    c.life_steps = 100
    c.life_batch = 32
    c.life_lr = 0.05
    c.life_momentum = 0.9
    c.life_weight_decay = 5e-4
    c.augment = "none"
    c.num_critics = 4
    c.critic_way = 5
    c.critic_shot = 1
    c.critic_query = 15
    c.critic_steps = 20
    c.life_closed = True
    c.fixed_critics = True
    c.selection = "tournament"
    c.score_decay = 0.6
    c.mutation_sigma = 0.1
    c.mutation_rate = 0.5
    c.final_candidates = 3
    c.rescore_episodes = 100

    c.eval_episodes = 200
    c.eval_way = 5
    c.eval_shots = "1,5"
    c.eval_query = 15
    c.eval_seed = 1234
    c.head = "random"
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.steps = 20
    c.eval_every = 10
    c.batch_norm = "frozen"

    # The evidence suite (python -m gtl_jax.inherit); descendants use the recipe above.
    c.methods = "learngene,scratch,pretrain-full,pretrain-circuit,heur-lg,proto-frozen"
    c.heads = "random,prototype"
    c.inherit_episodes = 600
    c.eval_split = "test"
    c.heur_layers = 3
    c.pretrain_steps = 2000
    c.pretrain_batch = 64
    c.pretrain_lr = 1e-3
    c.pretrain_weight_decay = 0.0
    c.workers = 0

    # The study (python -m gtl_jax.study): several evolutions, controls, baselines.
    c.seeds = "0,1,2"
    c.study_ways = "5,20"
    c.study_episodes = 100
    c.study_methods = (
        "learngene,no-selection,score-selection,untrained-circuit,pretrain-circuit-eq,"
        "pretrain-closed-eq,scratch,pretrain-full"
    )
    c.transfer_dataset = "digits"

    c.strategy = "auto"
    c.distributed = False
    c.processes = 1
    c.seed = 0

    if arg == "smoke":
        c.width = 0.0625
        c.pop_size = 3
        c.generations = 2
        c.life_steps = 3
        c.num_critics = 1
        c.critic_steps = 2
        c.eval_episodes = 3
        c.steps = 2
        c.eval_every = 1
        c.inherit_episodes = 3
        c.pretrain_steps = 3
        c.rescore_episodes = 2
        c.seeds = "0,1"
        c.study_episodes = 2
        c.workers = 1  # at toy sizes a worker process costs more than it saves
    elif arg:
        raise ValueError(
            f"unknown variant {arg!r} of the omniglot config (known: smoke)"
        )
    return c
