"""Pools that change every generation, prepared one generation ahead in a background thread.

A dataset too large to hold in memory (ImageNet-1K, ``gtl_jax.data.imagenet``) gives each
generation fresh pools, drawn deterministically from ``(seed, generation)`` by a function
``fetch(g)``. ``PoolStream`` calls it for generation g + 1 in one background thread while
generation g trains, so at most two generations' pools exist on the host: the one in use
and the one being prepared. A shell module (threads, no jit).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PoolStream(Generic[T]):
    """``get(g)``: generation g's pools (``fetch(g)``), and starts preparing g + 1.

    Args:
      fetch: ``fetch(g)`` -> the pools of generation g; deterministic in g, so a resumed
        run gets the same pools.
      stop: no generation from ``stop`` on is prepared ahead (the run's last is
        ``stop - 1``).
      name: the prefix of the background thread's name.

    A context manager: leaving it (or ``close``) cancels what is being prepared and joins
    the thread. Errors of ``fetch`` surface in the ``get`` of that generation.
    """

    def __init__(
        self, fetch: Callable[[int], T], *, stop: int, name: str = "gtl-pool-stream"
    ):
        self._fetch, self._stop = fetch, int(stop)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name
        )
        self._ahead: tuple[int, concurrent.futures.Future] | None = None
        self._closed = False

    def get(self, generation: int) -> T:
        """Generation ``generation``'s pools (waiting for them if they are being
        prepared); then starts preparing the next one."""
        if self._closed:
            raise RuntimeError("the pool stream is closed")
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == generation:
            future = ahead[1]
        else:
            if ahead is not None:  # another generation was prepared: drop it
                ahead[1].cancel()
                concurrent.futures.wait([ahead[1]])
            future = self._executor.submit(self._fetch, generation)
        pools = future.result()
        del future
        if generation + 1 < self._stop:
            self._ahead = (
                generation + 1,
                self._executor.submit(self._fetch, generation + 1),
            )
        return pools

    def close(self) -> None:
        """Cancels the generation being prepared (waits for a running ``fetch`` to end)
        and joins the thread."""
        self._closed = True
        if self._ahead is not None:
            self._ahead[1].cancel()
        self._ahead = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PoolStream[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
