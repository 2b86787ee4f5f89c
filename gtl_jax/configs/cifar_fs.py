"""GTL on CIFAR-FS with VGG11 at 32x32: the paper's first experiment.

Run (a folder holding CIFAR_FS_*.pickle, cifar-100-python.tar.gz or a tfds cifar100; README, "Data"):
  python -m gtl_jax.evolve --config cifar_fs --data_dir /path/to/cifar --workdir runs/cifar_fs
  python -m gtl_jax.evolve --config cifar_fs:smoke --data_dir ...  # seconds: the whole pipeline

Paper headline to compare with (DESIGN 1): with 20% of the parameters, learngenes give +12% accuracy
over the same VGG11 trained from random initialisation on CIFAR-FS. The learngene and scratch rows
of ``results.md`` are that comparison (5-way 1-shot and 5-shot, 600 test episodes); the loop's
settings below are choices (the paper's own are not public), fields of the omniglot config.

Expected runtime on one GPU, an estimate from FLOPs (not measured: no GPU here). VGG11 x1 at 32x32
is 0.25 GFLOP per image forward (XLA cost analysis), about 0.75 GFLOP per trained image.
  lifetime: 20 gen x 12 hosts x 200 steps x 64 images = 3.1M images -> 2.3 PFLOP
  critics:  20 gen x 12 x 4 critics x 50 steps x 5 images = 0.24M   -> 0.2 PFLOP
  test:     600 episodes x 2 methods x (5 + 25 images) x 50 steps = 1.8M -> 1.4 PFLOP
About 3.9 PFLOP: at a sustained 10-40 TFLOP/s (an A100 running small vmapped convs in f32/TF32),
2 to 7 minutes, plus about a minute of compilation. On 2 CPU cores it would take days.
"""

from __future__ import annotations

import ml_collections

from gtl_jax.configs import omniglot
from gtl_jax.data.augment import DATASET_AUGMENT


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # Every field comes from the omniglot config; only what differs is set here.
    c = omniglot.get_config()
    c.dataset = "cifar_fs"
    c.image_size = 32
    c.model = "vgg11"
    c.width = 1.0
    c.augment = DATASET_AUGMENT[c.dataset]

    c.pop_size = 12
    c.generations = 20
    c.life_steps = 200
    c.life_batch = 64
    c.num_critics = 4
    c.critic_steps = 50
    c.eval_episodes = 600
    c.steps = 50

    if arg == "smoke":
        # The whole pipeline on a few images per class (the tests' synthetic files hold 4).
        c.width = 0.0625
        c.pop_size = 3
        c.generations = 2
        c.life_steps = 2
        c.life_batch = 8
        c.num_critics = 1
        c.critic_query = 2
        c.critic_steps = 2
        c.eval_episodes = 2
        c.eval_shots = "1"
        c.eval_query = 2
        c.steps = 2
        c.eval_every = 1
    elif arg:
        raise ValueError(
            f"unknown variant {arg!r} of the cifar_fs config (known: smoke)"
        )
    return c
