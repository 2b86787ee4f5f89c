"""Shared test settings: CPU, the CLI's JAX settings, a persistent compile cache, tiny sizes."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No test touches the network: an Omniglot download (tried only where no folder holds the
# data) goes to a closed local port; the download tests serve files on 127.0.0.1 themselves.
os.environ["GTL_OMNIGLOT_URL"] = "http://127.0.0.1:9/no-network-in-tests/"

import jax  # noqa: E402
import pytest  # noqa: E402

from gtl_jax.experiment import configure_jax  # noqa: E402

configure_jax()

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def omniglot():
    """Real Omniglot pools (numpy), loaded once per session."""
    from gtl_jax.data import load_omniglot

    return load_omniglot()


@pytest.fixture(scope="session")
def key():
    return jax.random.key(0)
