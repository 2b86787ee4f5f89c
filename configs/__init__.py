"""Experiment configs: one ``ml_collections`` file per experiment, ``get_config(arg)``.

This folder sits at the top of the repository and is installed as the package
``gtl_jax.configs`` (pyproject.toml, setup.py), so the files exist once. The commands load
them with ``ml_collections.config_flags``:

  python -m gtl_jax.evolve --config=configs/omniglot.py:smoke --config.seed=3

(``--config=omniglot:smoke`` is the installed file; without ``--config``,
``configs/omniglot.py``). ``gtl_jax.experiment.load_config("omniglot:smoke")`` loads one
from Python. ``_paper.py`` is a private helper of the paper's configs, not a config.
"""
