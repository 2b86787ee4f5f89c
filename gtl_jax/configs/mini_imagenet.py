"""GTL on miniImageNet with ResNet12 at 84x84: the paper's second experiment.

Run (a folder holding mini-imagenet-cache-*.pkl or miniImageNet_category_split_*.pickle; README,
"Data"):
  python -m gtl_jax.evolve --config mini_imagenet --data_dir /path/to/mini --workdir runs/mini
  python -m gtl_jax.evolve --config mini_imagenet:smoke --data_dir ...  # the whole pipeline

Paper headline to compare with (DESIGN 1): with 20% of the parameters, learngenes give +16% accuracy
over the same ResNet12 trained from random initialisation on miniImageNet. The learngene and
scratch rows of ``results.md`` are that comparison (5-way 1-shot and 5-shot, 600 test episodes);
the loop's settings below are choices (the paper's own are not public), fields of the omniglot
config.

Expected runtime on one GPU, an estimate from FLOPs (not measured: no GPU here). ResNet12 x1 at
84x84 is 6.6 GFLOP per image forward (XLA cost analysis), about 20 GFLOP per trained image.
  lifetime: 20 gen x 12 hosts x 200 steps x 32 images = 1.5M images -> 30 PFLOP
  critics:  20 gen x 12 x 4 critics x 50 steps x 5 images = 0.24M   -> 5 PFLOP
  test:     600 episodes x 2 methods x (5 + 25 images) x 50 steps = 1.8M -> 36 PFLOP
About 71 PFLOP: at a sustained 10-40 TFLOP/s (an A100 in f32/TF32), 0.5 to 2 hours. Twelve
ResNet12 hosts training at once need tens of GB of activations: on a smaller GPU use
``--strategy loop`` (one host at a time; same results).
"""

from __future__ import annotations

import ml_collections

from gtl_jax.configs import omniglot
from gtl_jax.data.augment import DATASET_AUGMENT


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # Every field comes from the omniglot config; only what differs is set here.
    c = omniglot.get_config()
    c.dataset = "mini_imagenet"
    c.image_size = 84
    c.model = "resnet12"
    c.width = 1.0
    c.augment = DATASET_AUGMENT[c.dataset]

    c.pop_size = 12
    c.generations = 20
    c.life_steps = 200
    c.life_batch = 32
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
        c.life_batch = 4
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
            f"unknown variant {arg!r} of the mini_imagenet config (known: smoke)"
        )
    return c
