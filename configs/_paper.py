"""The settings the paper's experiments share (``cifar_fs.py``, ``mini_imagenet.py``; the
ImageNet-1K config, ``imagenet.py``, runs the same loop).

Not a config itself: both experiments run the loop of the omniglot config at the scale below
(12 hosts, 20 generations, 600 test episodes, full-width networks), and differ only in dataset,
image size, architecture and batch size. The scale is a choice; the paper's own is not public.
"""

from __future__ import annotations

import ml_collections

from gtl_jax.configs import omniglot
from gtl_jax.data.augment import DATASET_AUGMENT


def paper_config(
    arg: str | None,
    *,
    dataset: str,
    image_size: int,
    model: str,
    life_batch: int,
    smoke_life_batch: int,
) -> ml_collections.ConfigDict:
    """The omniglot config with the paper-scale settings and a ``smoke`` variant.

    Args:
      arg: None or ``"smoke"`` (the whole pipeline on a few images per class).
      dataset: ``data.dataset``, a key of ``gtl_jax.data.DATASETS``; also picks the
        augmentation (``evolution.augment``).
      image_size: S (``data.image_size``).
      model: ``model.name``, a key of ``gtl_jax.models.MODELS``.
      life_batch: the lifetime batch size (``evolution.life_batch``).
      smoke_life_batch: the lifetime batch size of the smoke variant.

    Raises:
      ValueError: on another ``arg``.
    """
    # Every field comes from the omniglot config; only what differs is set here.
    c = omniglot.get_config()
    c.data.dataset = dataset
    c.data.image_size = image_size
    c.model.name = model
    c.model.width = 1.0
    c.evolution.augment = DATASET_AUGMENT[dataset]

    c.evolution.pop_size = 12
    c.evolution.generations = 20
    c.evolution.life_steps = 200
    c.evolution.life_batch = life_batch
    c.evolution.num_critics = 4
    c.evolution.critic_steps = 50
    c.evaluation.eval_episodes = 600
    c.descendants.steps = 50

    if arg == "smoke":
        # The tests' synthetic files hold 4 images per class.
        c.model.width = 0.0625
        c.evolution.pop_size = 3
        c.evolution.generations = 2
        c.evolution.life_steps = 2
        c.evolution.life_batch = smoke_life_batch
        c.evolution.num_critics = 1
        c.evolution.critic_query = 2
        c.evolution.critic_steps = 2
        c.evaluation.eval_episodes = 2
        c.evaluation.eval_shots = "1"
        c.evaluation.eval_query = 2
        c.descendants.steps = 2
        c.descendants.eval_every = 1
        c.execution.workers = (
            1  # at toy sizes a worker process costs more than it saves
        )
    elif arg:
        raise ValueError(
            f"unknown variant {arg!r} of the {dataset} config (known: smoke)"
        )
    return c
