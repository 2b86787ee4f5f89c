"""GTL on CIFAR-FS with VGG11 at 32x32: the paper's first experiment.

Run (a folder holding CIFAR_FS_*.pickle, cifar-100-python.tar.gz or a tfds cifar100; README, "Data"):
  python -m gtl_jax.evolve --config=configs/cifar_fs.py --config.data.data_dir=/path/to/cifar \
      --workdir=runs/cifar_fs
  python -m gtl_jax.evolve --config=configs/cifar_fs.py:smoke --config.data.data_dir=...
      # seconds: the whole pipeline

Paper headline to compare with: with 20% of the parameters, learngenes give +12% accuracy
over the same VGG11 trained from random initialisation on CIFAR-FS. The learngene and scratch rows
of ``results.md`` are that comparison (5-way 1-shot and 5-shot, 600 test episodes); the loop's
settings (``_paper.py``) are choices (the paper's own are not public), fields of the omniglot
config.

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

from gtl_jax.configs._paper import paper_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return paper_config(
        arg,
        dataset="cifar_fs",
        image_size=32,
        model="vgg11",
        life_batch=64,
        smoke_life_batch=8,
    )
