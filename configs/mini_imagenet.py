"""GTL on miniImageNet with ResNet12 at 84x84: the paper's second experiment.

Run (a folder holding mini-imagenet-cache-*.pkl or miniImageNet_category_split_*.pickle; README,
"Data"):
  python -m gtl_jax.evolve --config=configs/mini_imagenet.py \
      --config.data.data_dir=/path/to/mini --workdir=runs/mini
  python -m gtl_jax.evolve --config=configs/mini_imagenet.py:smoke \
      --config.data.data_dir=...  # the whole pipeline

Paper headline to compare with: with 20% of the parameters, learngenes give +16% accuracy
over the same ResNet12 trained from random initialisation on miniImageNet. The learngene and
scratch rows of ``results.md`` are that comparison (5-way 1-shot and 5-shot, 600 test episodes);
the loop's settings (``_paper.py``) are choices (the paper's own are not public), fields of the
omniglot config.

Expected runtime on one GPU, an estimate from FLOPs (not measured: no GPU here). ResNet12 x1 at
84x84 is 6.6 GFLOP per image forward (XLA cost analysis), about 20 GFLOP per trained image.
  lifetime: 20 gen x 12 hosts x 200 steps x 32 images = 1.5M images -> 30 PFLOP
  critics:  20 gen x 12 x 4 critics x 50 steps x 5 images = 0.24M   -> 5 PFLOP
  test:     600 episodes x 2 methods x (5 + 25 images) x 50 steps = 1.8M -> 36 PFLOP
About 71 PFLOP: at a sustained 10-40 TFLOP/s (an A100 in f32/TF32), 0.5 to 2 hours. Twelve
ResNet12 hosts training at once need tens of GB of activations: on a smaller GPU use
``--config.execution.strategy=loop`` (one host at a time; same results).
"""

from __future__ import annotations

import ml_collections

from gtl_jax.configs._paper import paper_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return paper_config(
        arg,
        dataset="mini_imagenet",
        image_size=84,
        model="resnet12",
        life_batch=32,
        smoke_life_batch=4,
    )
