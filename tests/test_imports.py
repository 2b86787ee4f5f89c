"""Importing the package pulls in no heavy optional dependency (issue 15, item 6):
tensorflow-datasets is imported only by the loader that reads a tfds folder."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

_CHECK = """
import importlib, pkgutil, sys
import gtl_jax
for info in pkgutil.walk_packages(gtl_jax.__path__, "gtl_jax."):
    importlib.import_module(info.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_datasets", "tensorflow"))
print(len(list(pkgutil.walk_packages(gtl_jax.__path__, "gtl_jax."))), heavy)
"""


def test_importing_every_module_imports_no_tensorflow_datasets():
    out = subprocess.run(
        [sys.executable, "-c", _CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert int(out[0]) > 20  # every module of the package, subpackages included
    assert out[1:] == ["[]"]
