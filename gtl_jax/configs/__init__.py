"""Experiment configs: one ``ml_collections`` file per experiment, ``get_config(arg)``.

``python -m gtl_jax.evolve --config omniglot:smoke`` loads ``omniglot.py`` here with arg "smoke";
a path to a ``.py`` file of the same form works too.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``NAME[:ARG]`` (a module of this package) or ``PATH.py[:ARG]``."""
    name, _, arg = spec.partition(":")
    if name.endswith(".py"):
        path = pathlib.Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        known = sorted(p.stem for p in pathlib.Path(__file__).parent.glob("[a-z]*.py"))
        if name not in known:  # also refuses the private helpers (_paper) and "a.b"
            raise ValueError(
                f"unknown config {name!r}; known configs: {', '.join(known)} (or a path to a .py)"
            )
        module = importlib.import_module(f"gtl_jax.configs.{name}")
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config {spec!r} defines no get_config(arg) function")
    return module.get_config(arg or None)
