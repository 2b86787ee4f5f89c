"""The wheel: the top-level configs/ folder is installed as the package gtl_jax.configs, and
an installed (non-editable) package finds its configs without the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

# The fast tier (-m 'not slow') leaves these out: builds and installs the wheel in subprocesses.
pytestmark = pytest.mark.slow

setuptools = pytest.importorskip("setuptools")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built offline from a copy of the sources (the build writes build/ and
    *.egg-info next to them, not in the repository)."""
    if _version(setuptools.__version__) < (70, 1):
        pytest.skip(
            "setuptools < 70.1 has no bdist_wheel of its own (pip install -e '.[test]')"
        )
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("gtl_jax", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
    ]
    subprocess.run(
        [*command, "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = (tmp / "dist").glob("gtl_jax-*.whl")
    return path


def test_the_wheel_holds_the_config_files_once_as_gtl_jax_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
    assert (
        sorted(n.split("/")[-1] for n in names if n.startswith("gtl_jax/configs/"))
        == configs
    )
    assert {
        "__init__.py",
        "omniglot.py",
        "cifar_fs.py",
        "mini_imagenet.py",
        "_paper.py",
    } <= set(configs)
    assert not any(n.startswith("configs/") for n in names)  # no top-level package
    assert (
        "gtl_jax/experiment.py" in names
        and "gtl_jax/data/splits/cifar_fs_test.txt" in names
    )


def test_an_installed_package_loads_its_configs_by_name_and_by_default(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
        + ["--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    check = (
        "from gtl_jax import experiment as x; "
        "print(x.config_dir()); "
        "print(x.load_config('omniglot:smoke').evolution.pop_size, "
        "x.load_config('configs/cifar_fs.py').data.dataset, "
        "x.resolve_config(x.DEFAULT_CONFIG))"
    )
    out = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,  # no configs/ folder here: the installed files
        env={
            "PYTHONPATH": str(target),
            "JAX_PLATFORMS": "cpu",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    installed = target / "gtl_jax" / "configs"
    assert out == [str(installed), "3", "cifar_fs", str(installed / "omniglot.py")]
