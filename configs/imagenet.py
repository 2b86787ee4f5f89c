"""GTL on ImageNet-1K with ViT-Small (16-pixel patches) at 224x224.

Data: the tensorflow-datasets ``imagenet2012`` prepared as array_record from the manual
download (the two tars from https://image-net.org/download-images; TensorFlow is needed for
this step only, e.g. ``pip install tensorflow-cpu``):
  tfds build imagenet2012 --manual_dir=/path/to/tars --file_format=array_record \\
      --data_dir=/path/to/tensorflow_datasets
The run reads it without TensorFlow (``gtl_jax/data/imagenet.py``); the first run indexes the
labels in one pass over the records (cached).

Run (one machine, its GPUs or TPU cores; the population is sharded over all devices):
  python -m gtl_jax.evolve --config=configs/imagenet.py \\
      --config.data.data_dir=/path/to/tensorflow_datasets --workdir=runs/imagenet
  python -m gtl_jax.evolve --config=configs/imagenet.py:smoke \\
      --config.data.data_dir=...      # the whole pipeline at toy sizes (tests: synthetic data)
Several hosts (a TPU pod slice, a GPU cluster): every host runs the same command with
``--config.execution.distributed=true``; each host reads the data (a copy each, or a shared
file system) and builds the same pools from the same keys.

Classes: 800 for evolution (lifetime tasks), 100 for the critics, 100 held out for the
downstream tasks (``data.classes``; a fixed permutation of the label ids, the same for every
seed). Each generation draws ``data.classes_per_generation`` = 100 of the 800 evolution
classes and ``data.images_per_class`` = 100 train images of each (decoded in a background
thread while the previous generation trains: never the whole dataset in memory); critics use
20 train images of each critic class, drawn once per seed; the final table 20 of the
official validation images of each held-out class. Lifetime tasks are 50-way, with crop and
flip augmentation, trained with Adam at 1e-3 (as the omniglot config's vit variant: ViTs hardly
learn in a lifetime with the CNNs' SGD); the loop is the paper configs' (``_paper.py``: 12
hosts, 20 generations, 200 lifetime steps, 4 critics of 50 steps, 600 test episodes).

Expected time per generation: an estimate from FLOP counts, not measured (no GPU or TPU here).
ViT-Small at 224x224 is 9.27 GFLOP per image forward and 28.3 GFLOP per image forward and
backward (XLA cost analysis of the model in float32, ``jax.jit(...).lower(...).compile()
.cost_analysis()``; a multiply-add counts 2; ``python benchmarks/model_flops.py`` prints them).
  lifetimes: 12 hosts x 200 steps x 64 images = 153,600 images x 28.3 GFLOP = 4.35 PFLOP
  critics:   12 x 4 critics x 50 steps x 5 images = 12,000 images x 28.3 GFLOP = 0.34 PFLOP
             + their query accuracy before and after: 2 x 48 x 75 images x 9.27 GFLOP = 0.07
  a generation: about 4.8 PFLOP.
- One TPU v4-8 (4 chips, 4 x 275 = 1100 TFLOP/s bfloat16 peak), with
  ``--config.model.precision=bfloat16`` at a sustained 30-50% of peak (330-550 TFLOP/s):
  9 to 15 s per generation.
- 8x A100 (8 x 312 TFLOP/s bfloat16, 8 x 156 TF32 peak), same utilisation: 4 to 6 s per
  generation in bfloat16, 8 to 12 s in float32 (TF32).
The 20 generations then take 1.5 to 5 minutes plus compilation; the final table (600
episodes x 2 shot settings x 2 methods x 50 steps x 5 or 25 support images: 1.8M trained
images, 51 PFLOP, plus 2,400 curves x 6 points x 75 queries x 9.27 GFLOP = 10 PFLOP) 1 to 3
minutes. Decoding a generation's 10,000 images takes about 35 core-seconds
(3.5 ms per image to 224x224, measured on one core of this project's CPU with Pillow), a
second or two on the host cores of either machine, prepared while the previous generation
trains. Memory per device: the pools (two lifetime pools of 1.5 GB, generation 0's and the
current one, and the critics' 0.3 GB, replicated) plus the ViT-Small activations of the
members on that device (about 4 GB per member at batch 64 in float32).
"""

from __future__ import annotations

import ml_collections

from gtl_jax.configs._paper import paper_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = paper_config(
        arg,
        dataset="imagenet",
        image_size=224,
        model="vit_small",
        life_batch=64,
        smoke_life_batch=4,
    )
    # Heur-LG transfers conv layers, which a ViT has none of.
    c.suite.methods = "learngene,scratch,pretrain-full,pretrain-circuit,proto-frozen"
    # ViTs learn in a lifetime with Adam, hardly with the CNNs' SGD (the omniglot config's
    # vit variant, where this was measured on the meta-validation classes).
    c.evolution.life_optimizer = "adam"
    c.evolution.life_lr = 1e-3
    c.evolution.life_weight_decay = 0.0
    if arg == "smoke":
        # The tests' synthetic imagenet2012: 16 classes, 6 train and 4 validation images
        # each, of varied sizes; 32x32 images in 8-pixel patches (16 tokens). The registry's
        # ViT for small images (vit_fs, 6 blocks) x1/4: 2 heads of 16 dims. ViT-Small's 12
        # blocks, even 1 head wide, took 3 minutes to compile on 2 CPU cores, against 1.5.
        c.data.image_size = 32
        c.model.name = "vit_fs"
        c.model.width = 0.25
        c.model.patch = 8
        c.data.classes = "6,5,5"
        c.data.classes_per_generation = 4
        c.data.images_per_class = 4
        c.data.eval_images_per_class = 3
        c.evolution.life_way = 4
        c.evolution.rescore_episodes = 2
    return c
