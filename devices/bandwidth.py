"""This machine's measured memory bandwidth: the anchor of every roofline estimate.

A graph call on a CPU streams its weights (and KV cache) from DRAM once per call, so its
lower bound is `bytes read / read bandwidth`. We measure that bandwidth here, with the same
number of threads the runtime uses, by reading (summing) and copying buffers far larger than
any cache. It takes a second or two and is cached per machine under the edge cache dir.

    from edge.devices.bandwidth import machine_bandwidth
    bw = machine_bandwidth()          # cached after the first call
    bw.read_gbs, bw.copy_gbs
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from edge.devices.cache import machine_id, machine_measurement
from edge.runtime.sessions import cpu_count

BUFFER_BYTES = 256 * 2**20  # far past any L3 here; small enough to be quick
REPEATS = 5
CACHE_NAME = "bandwidth.json"


@dataclass(frozen=True)
class Bandwidth:
    """Best-of-N sustained bandwidth in GB/s (10^9 bytes per second)."""

    read_gbs: float  # bytes read per second (a reduction over the buffer)
    copy_gbs: float  # bytes read + written per second (a buffer copy)
    threads: int
    buffer_mib: int
    machine: str
    measured_at: str

    def to_json(self) -> dict:
        return asdict(self)


def _best_rate(fn, parts: list, nbytes: int, pool: ThreadPoolExecutor) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        list(pool.map(fn, parts))
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def measure_bandwidth(threads: int | None = None, buffer_bytes: int = BUFFER_BYTES) -> Bandwidth:
    """Measure read and copy bandwidth with `threads` workers (numpy releases the GIL for both)."""
    threads = threads or cpu_count()
    n = buffer_bytes // 4 // threads * threads
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)  # touched by the first copy, before anything is timed
    srcs, dsts = np.split(src, threads), np.split(dst, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: np.copyto(dsts[i], srcs[i]), range(threads)))  # page in and warm up
        read = _best_rate(lambda a: np.add.reduce(a, dtype=np.float32), srcs, src.nbytes, pool)
        copy = _best_rate(lambda i: np.copyto(dsts[i], srcs[i]), range(threads), 2 * src.nbytes, pool)
    return Bandwidth(round(read, 2), round(copy, 2), threads, buffer_bytes // 2**20, machine_id(),
                     time.strftime("%Y-%m-%dT%H:%M:%S"))


def machine_bandwidth(threads: int | None = None, refresh: bool = False) -> Bandwidth:
    """This machine's bandwidth, measured once and cached (keyed by machine and thread count)."""
    return Bandwidth(**machine_measurement(CACHE_NAME, "memory bandwidth", threads or cpu_count(),
                                           lambda t: measure_bandwidth(t).to_json(), refresh))
