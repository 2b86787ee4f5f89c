"""The package list (everything else is in pyproject.toml): the packages under gtl_jax/, and
gtl_jax.configs, the repository's top-level configs/ folder (``[tool.setuptools.package-dir]``
in pyproject.toml maps it), which ``packages.find`` cannot list."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["gtl_jax*"]), "gtl_jax.configs"])
