"""``LifeWorkers``: the members' lives of a generation split between worker processes.

On CPU XLA uses two cores poorly for small networks: at the default sizes one pinned process
trains a member about as fast as one process on both cores
(``docs/cpu/default_size.md``), so two processes pinned one per core about
double the rate. ``LifeWorkers`` is the ``workers`` of ``HostExecutor.generation``: each
worker builds its own executor once (``make_executor(*args)``, a picklable module-level
function, e.g. ``gtl_jax.build.worker_executor``) and computes ``HostExecutor.evaluate``
for a block of members. Every block draws the keys, tasks and critic episodes of the whole
population, so a member's numbers do not depend on its block or on the number of workers
(tested); they differ at float rounding from one process on both cores, which sums in
another order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gtl_jax import distributed
from gtl_jax.evolution import Evaluation
from gtl_jax.executors.host import HostExecutor

# One executor per worker process, built by the pool's initializer.
_WORKER_EXECUTOR: HostExecutor | None = None


def _start(make_executor: Callable[..., HostExecutor], args: tuple) -> None:
    global _WORKER_EXECUTOR
    _WORKER_EXECUTOR = make_executor(*args)


def _life_job(
    root_key_data, generation: int, learngenes, lo: int, hi: int, progress, life_genes
) -> Evaluation:
    executor = _WORKER_EXECUTOR
    # Progress counts the steps of the whole population.
    share = (hi - lo) / executor.evo.config.pop_size
    evaluation = executor.evaluate(
        jax.random.wrap_key_data(root_key_data),
        generation,
        jax.tree.map(jnp.asarray, learngenes),
        lo,
        hi,
        on_step=lambda n: progress.put(n * share),
        life_genes=None
        if life_genes is None
        else jax.tree.map(jnp.asarray, life_genes),
    )
    return jax.device_get(evaluation)


class LifeWorkers:
    """``HostExecutor.evaluate`` of a whole population, in blocks of members computed by
    ``workers`` processes pinned one per core; a context manager.

    Args:
      make_executor: builds the worker's ``HostExecutor`` from ``args`` (picklable).
      args: its arguments.
      size: the population size P.
      workers: the number of processes (blocks).
    """

    def __init__(
        self,
        make_executor: Callable[..., HostExecutor],
        args: tuple,
        size: int,
        workers: int,
    ):
        self.size, self.workers = int(size), workers
        self._pool = distributed.worker_pool(workers, _start, (make_executor, args))

    def __enter__(self) -> LifeWorkers:
        self.pool, self.progress = self._pool.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.__exit__(*exc)

    def __call__(
        self, root_key, generation: int, learngenes, on_step=None, life_genes=None
    ) -> Evaluation:
        bounds = distributed.block_bounds(self.size, self.workers)
        genes, life_genes = distributed.to_host((learngenes, life_genes))
        root_key_data = np.asarray(jax.random.key_data(root_key))
        futures = [
            self.pool.submit(
                _life_job,
                root_key_data,
                int(generation),
                jax.tree.map(lambda x, lo=lo, hi=hi: x[lo:hi], genes),
                int(lo),
                int(hi),
                self.progress,
                None
                if life_genes is None
                else {n: v[lo:hi] for n, v in life_genes.items()},
            )
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        blocks = distributed.wait_all(futures, self.progress, on_step)
        # Every field has a leading member axis: the blocks join along it.
        joined = jax.tree.map(lambda *xs: np.concatenate(xs), *blocks)
        return joined.replace(trained=jax.tree.map(jnp.asarray, joined.trained))
