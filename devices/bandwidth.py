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

import json
import logging
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BUFFER_BYTES = 256 * 2**20  # far past any L3 here; small enough to be quick
REPEATS = 5


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


def machine_id() -> str:
    """What identifies this machine's memory system well enough to reuse a cached measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.node()}|{cpu}|{os.cpu_count()} cpus"


def _best_rate(fn, parts: list, nbytes: int, pool: ThreadPoolExecutor) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        list(pool.map(fn, parts))
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def measure_bandwidth(threads: int | None = None, buffer_bytes: int = BUFFER_BYTES) -> Bandwidth:
    """Measure read and copy bandwidth with `threads` workers (numpy releases the GIL for both)."""
    threads = threads or max(1, len(os.sched_getaffinity(0)))
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


def _cache_file() -> Path:
    from edge.api import cache_dir

    return cache_dir() / "bandwidth.json"


def machine_bandwidth(threads: int | None = None, refresh: bool = False) -> Bandwidth:
    """This machine's bandwidth, measured once and cached (keyed by machine and thread count)."""
    threads = threads or max(1, len(os.sched_getaffinity(0)))
    path = _cache_file()
    key = f"{machine_id()}|threads={threads}"
    cached: dict = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
    if not refresh and key in cached:
        return Bandwidth(**cached[key])
    log.info("measuring this machine's memory bandwidth (%d threads; once, then cached in %s)", threads, path)
    bw = measure_bandwidth(threads)
    cached[key] = bw.to_json()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        tmp.replace(path)
    except OSError as e:  # a read-only cache is no reason to fail a profile
        log.warning("could not cache the bandwidth measurement in %s: %s", path, e)
    return bw
