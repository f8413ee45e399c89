"""Running independent pieces of a frame's work on the machine's cores.

The Pi 5 and the build machine have few cores (4 and 2); the heavy steps
(FFTs, array arithmetic, OpenCV filters) release Python's global interpreter
lock, so threads over independent tiles, frames or cell batches use the
cores without copying the frames between processes. Each piece then runs its
FFTs single-threaded (:data:`FFT_WORKERS_IN_THREAD`), so the cores are not
oversubscribed. Results are always returned in the order of the inputs, so a
threaded run gives the same numbers as a serial one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

#: FFT workers of a transform run inside one of the threads
FFT_WORKERS_IN_THREAD = 1

_threads = max(1, int(os.environ.get("HOLODIFF_THREADS", "0") or 0)
               or min(4, os.cpu_count() or 1))


def threads() -> int:
    """Threads for the per-tile, per-frame and per-batch work of one analysis.

    The CPU count (at most 4) unless the environment's ``HOLODIFF_THREADS`` or
    :func:`set_threads` says otherwise (several analyses side by side share the cores).
    """
    return _threads


def set_threads(n: int) -> None:
    """Set :func:`threads` for this process (at least 1)."""
    global _threads
    _threads = max(1, int(n))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, threads: int | None = None,
                ahead: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``threads`` threads (default :func:`threads`), results in input order.

    At most ``ahead`` (default ``threads``) pieces run or wait finished ahead of
    the consumer, so large results (whole frames) do not pile up. An exception
    of ``fn`` is raised when its result is reached, as in the serial ``map``.
    """
    threads = _threads if threads is None else threads
    if threads <= 1:
        yield from map(fn, items)
        return
    limit = max(1, ahead or threads)
    it = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = deque()
        for x in it:
            pending.append(pool.submit(fn, x))
            if len(pending) >= limit:
                break
        while pending:
            result = pending.popleft().result()
            for x in it:
                pending.append(pool.submit(fn, x))
                break
            yield result


def by_row_bands(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray, halo: int, *,
                 threads: int | None = None) -> np.ndarray:
    """``fn(a)`` for a local filter ``fn``, computed on bands of rows side by side.

    Each band is filtered with ``halo`` extra rows each side (at least the
    filter's radius), so the result equals ``fn(a)`` exactly: the frame's own
    edges stay edges, and interior band edges see their real neighbours.
    """
    threads = _threads if threads is None else threads
    h = a.shape[0]
    if threads <= 1 or h < 4 * (halo + 1) * threads:
        return fn(a)
    out = np.empty_like(a)
    cuts = np.linspace(0, h, threads + 1).astype(int)

    def run(i: int) -> None:
        r0, r1 = int(cuts[i]), int(cuts[i + 1])
        a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
        out[r0:r1] = fn(a[a0:a1])[r0 - a0:r0 - a0 + (r1 - r0)]

    for _ in ordered_map(run, range(threads), threads=threads):
        pass
    return out
