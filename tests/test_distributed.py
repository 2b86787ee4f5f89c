"""gtl_jax.distributed in one process: what every helper reduces to without joined
processes (tests/test_stopping.py and tests/test_sharding.py run joined ones)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from gtl_jax import distributed


def test_blocks_split_rows_evenly_and_one_process_holds_them_all():
    np.testing.assert_array_equal(distributed.block_bounds(10, 3), [0, 3, 7, 10])
    np.testing.assert_array_equal(distributed.block_bounds(9, 1), [0, 9])
    assert distributed.process_block(9) == (0, 9)
    values = np.arange(9.0)
    assert distributed.gather_blocks(values, 9) is values


def test_one_process_reads_its_own_arrays_and_decides_alone():
    x = jnp.arange(12).reshape(6, 2)
    assert distributed.rows(x, 0, 6) is x  # no copy
    np.testing.assert_array_equal(
        distributed.rows(x, 2, 5), np.arange(4, 10).reshape(3, 2)
    )
    assert distributed.local(x) is x
    host = distributed.to_host({"a": x})
    assert isinstance(host["a"], np.ndarray) and host["a"].shape == (6, 2)
    assert distributed.from_process_0(True) is True
    distributed.barrier("alone")  # returns at once


def test_default_workers_one_per_core_on_cpu_unless_asked():
    assert distributed.default_workers(3) == 3
    cores = distributed.available_cores()
    assert cores and distributed.default_workers(0) == len(cores)
    assert 1024 < distributed.free_port() < 65536
