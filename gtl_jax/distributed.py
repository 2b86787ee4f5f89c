"""Several processes: joining them, launching them on one machine, moving results between them.

JAX's multi-process runtime (``jax.distributed``) makes the devices of every process one global
device list; ``gtl_jax.sharding`` shards the population over all of them, so each process
trains the members on its own devices. Two uses:

- Several hosts (``--config.execution.distributed=true``): each host runs the command itself; the cluster tells
  JAX who is who (SLURM, Open MPI, Kubernetes, Cloud TPU), or the environment variables
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` do.
- Several processes on one CPU machine (``--config.execution.processes=N``): ``launch_local`` starts N copies of
  the command, one per core, each pinned to its core. XLA CPU uses two cores poorly for small
  networks: two pinned processes gave about 1.6x one process on both cores (docs/cpu.md).

A third, without ``jax.distributed``: ``worker_pool`` starts independent worker processes, one
pinned per core, for work that splits into independent jobs (the evidence suite's jobs, blocks
of an evolution's members). Each worker is a process of its own with one device, so it compiles
the programs of one process and shares the persistent compilation cache with it.

Host code reads results with ``to_host`` (a gather across processes when an array is split
between them) and splits host loops between processes with ``process_block`` and ``rows``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

# CHILD_ENV: set in the processes started by launch_local (defined by stopping, which
# reads it and imports nothing of the package).
from gtl_jax.stopping import CHILD_ENV, deferred, sigint_ignored  # noqa: F401


def initialize() -> None:
    """Joins the processes of the run (``jax.distributed.initialize``).

    Cross-process collectives on CPU need Gloo (JAX's CPU default does none), so it is chosen
    when the platform is CPU.
    """
    env = {
        "num_processes": os.environ.get("JAX_NUM_PROCESSES"),
        "process_id": os.environ.get("JAX_PROCESS_ID"),
    }
    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**{k: int(v) for k, v in env.items() if v is not None})


def from_process_0(value: bool) -> bool:
    """Process 0's ``value`` in every process (for decisions all processes must share)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.bool_(value)))


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name``."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_workers(requested: int) -> int:
    """Worker processes: ``requested`` if > 0; otherwise one per core on the CPU backend (XLA
    CPU keeps one core busy with small networks), one on GPU/TPU."""
    if requested > 0:
        return requested
    if jax.default_backend() != "cpu":
        return 1
    return max(1, len(available_cores()))


def _start_pinned(pin: bool, core_queue: Any, initializer: Callable, initargs: tuple):
    # Started with SIGINT ignored already (_WorkerProcess); kept so even if started otherwise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core_queue.get()})
    initializer(*initargs)


@contextlib.contextmanager
def worker_pool(
    workers: int, initializer: Callable, initargs: tuple = ()
) -> Iterator[tuple[concurrent.futures.ProcessPoolExecutor, Any]]:
    """``workers`` spawned processes, each pinned to its own core when there are enough.

    Yields ``(pool, progress)``: a process pool whose workers ran ``initializer(*initargs)``
    after pinning, and a queue the jobs may put progress into (see ``wait_all``).

    The workers (and the queues' manager process) ignore SIGINT: a Ctrl-C, which a terminal
    sends to the whole process group, stops only the main process. When the block ends with
    an exception (a ``KeyboardInterrupt``, ``gtl_jax.stopping.Stopped``, a job's error) the
    running jobs are not waited for: the workers are terminated.
    """
    context = _WorkerContext()
    # Starting the queues' server waits for it to report its address (it imports this
    # program's modules first: about a second); a stop during the wait would leave it
    # writing to a closed pipe (a BrokenPipeError traceback), so the stop waits.
    with deferred():
        manager = context.Manager()
    with manager:
        progress, core_queue = manager.Queue(), manager.Queue()
        cores = available_cores()
        pin = len(cores) >= workers
        for i in range(workers):
            core_queue.put(cores[i] if pin else 0)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_pinned,
            initargs=(pin, core_queue, initializer, initargs),
        )
        try:
            yield pool, progress
        except BaseException:
            _terminate(pool)
            raise
        pool.shutdown(wait=True)


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that ignores SIGINT from its start (``stopping.sigint_ignored``)."""

    def start(self) -> None:
        # A stop while it starts would leave it unknown to its pool: the stop waits.
        with deferred(), sigint_ignored():
            super().start()


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


def _terminate(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Terminates the pool's workers (SIGTERM: they die without a word) without waiting for
    running jobs, and cancels the pending ones."""
    # ProcessPoolExecutor.terminate_workers (Python 3.14) does this; before it, the processes
    # (read before shutdown, which forgets them).
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)
    # The pool's manager thread sees the workers gone, fails their jobs and ends.
    pool.shutdown(wait=True, cancel_futures=True)


def wait_all(
    futures: Sequence[concurrent.futures.Future],
    progress: Any,
    update: Callable[[float], Any] | None = None,
) -> list:
    """The results of ``futures`` in order; meanwhile passes what the jobs put into
    ``progress`` to ``update`` (e.g. ``tqdm.update``). A job's exception is raised here."""

    def drain():
        while not progress.empty():
            value = progress.get()
            if update is not None:
                update(value)

    pending = set(futures)
    while pending:
        _, pending = concurrent.futures.wait(pending, timeout=0.5)
        drain()
    drain()
    return [f.result() for f in futures]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(
    n: int, argv: Sequence[str], *, env: dict[str, str] | None = None
) -> int:
    """Runs ``python argv`` as ``n`` joined processes on this machine; returns the exit code.

    Process i is pinned to the i-th available core when there are at least ``n`` cores. Their
    output passes through (the command prints only from process 0). If one process fails,
    the others are stopped and its exit code is returned.
    """
    cores = available_cores()
    pin = len(cores) >= n
    base = dict(os.environ if env is None else env)
    base.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
        JAX_NUM_PROCESSES=str(n),
        **{CHILD_ENV: "1"},
    )
    procs = []
    for i in range(n):
        child = dict(base, JAX_PROCESS_ID=str(i))
        preexec = (
            (lambda core=cores[i]: os.sched_setaffinity(0, {core})) if pin else None
        )
        procs.append(
            subprocess.Popen([sys.executable, *argv], env=child, preexec_fn=preexec)
        )
    code = 0
    try:
        pending = list(procs)
        while pending:
            for p in list(pending):
                try:
                    rc = p.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(p)
                if rc != 0 and code == 0:
                    code = rc
                    for other in pending:
                        other.send_signal(signal.SIGTERM)
    except KeyboardInterrupt as stop:
        # Ctrl-C or SIGTERM (gtl_jax.stopping.Stopped): passed on to the processes, which
        # stop and report (process 0 prints the line); their exit code is the command's.
        signum = getattr(stop, "signum", signal.SIGINT)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
        codes = [p.wait() for p in procs]
        return codes[0] if codes[0] > 0 else 128 + signum
    return code


def agree_on_stop(signum: int) -> int:
    """The largest of every joined process's ``signum`` (0: no process holds a signal): a
    collective, so every process calls it at the same point (``stopping.agreed``)."""
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(signum))))


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree's arrays; an array split between processes is gathered."""

    def get(a):
        if isinstance(a, jax.Array) and not (
            a.is_fully_addressable or a.is_fully_replicated
        ):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)


def block_bounds(size: int, blocks: int) -> np.ndarray:
    """The edges of ``blocks`` equal contiguous blocks of ``range(size)``: i32[blocks + 1]."""
    return np.linspace(0, size, blocks + 1).round().astype(int)


def process_block(size: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of ``size`` that this process handles in a split host loop.

    Equal contiguous blocks in process order: the rows a population sharded over ``"pop"``
    keeps on this process's devices when ``size`` is divisible by the device count.
    """
    bounds = block_bounds(size, jax.process_count())
    i = jax.process_index()
    return int(bounds[i]), int(bounds[i + 1])


def rows(x: Any, lo: int, hi: int) -> Any:
    """Rows ``[lo, hi)`` of ``x`` as an array of this process's default device.

    Reads this process's own shards when they hold the rows; gathers otherwise.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x if (lo, hi) == (0, x.shape[0]) else x[lo:hi]  # one process: no copy
    if x.is_fully_replicated:
        return x.addressable_data(0)[lo:hi]
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    start, stop = shards[0].index[0].start or 0, shards[-1].index[0].stop
    contiguous = all(
        a.index[0].stop == b.index[0].start for a, b in zip(shards, shards[1:])
    )
    if contiguous and start <= lo and hi <= stop:
        local = jax.numpy.concatenate(
            [jax.device_put(s.data, jax.local_devices()[0]) for s in shards]
        )
        return local[lo - start : hi - start]
    return jax.numpy.asarray(to_host(x)[lo:hi])


def local(x: Any) -> Any:
    """``x`` if this process holds it whole; this process's copy if it is replicated."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return jax.numpy.asarray(to_host(x))
        return x.addressable_data(0)
    return x


def gather_blocks(values: np.ndarray, size: int) -> np.ndarray:
    """Every process's ``values`` (rows ``process_block(size)``), concatenated in row order."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    bounds = block_bounds(size, jax.process_count())
    longest = int(np.diff(bounds).max())
    padded = np.zeros((longest, *values.shape[1:]), values.dtype)
    padded[: len(values)] = values
    gathered = np.asarray(
        multihost_utils.process_allgather(padded)
    )  # [n, longest, ...]
    return np.concatenate(
        [gathered[i, : bounds[i + 1] - bounds[i]] for i in range(len(bounds) - 1)]
    )
