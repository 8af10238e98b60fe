"""Measurements of this machine, taken once and cached as JSON under the edge cache dir."""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

from edge.cache import cache_dir

log = logging.getLogger(__name__)


def machine_id() -> str:
    """What identifies this machine's CPU and memory well enough to reuse a cached measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.node()}|{cpu}|{os.cpu_count()} cpus"


def cache_file(name: str) -> Path:
    return cache_dir() / name


def machine_measurement(name: str, what: str, threads: int, measure: Callable[[int], dict],
                        refresh: bool = False, how: str = "") -> dict:
    """`measure(threads)` of this machine (`what` it measures, for the log), taken once per machine, thread
    count and `how` (settings that change the result) and cached in the file `name`."""

    def run() -> dict:
        log.info("measuring this machine's %s (%d threads; once, then cached in %s)", what, threads, cache_file(name))
        return measure(threads)

    key = "|".join(filter(None, (machine_id(), how, f"threads={threads}")))
    return cached_measurement(name, key, run, refresh)


def cached_measurement(name: str, key: str, measure: Callable[[], dict], refresh: bool = False) -> dict:
    """The entry `key` of the cache file `name`; `measure()` fills it when missing (or on `refresh`)."""
    path = cache_file(name)
    cached: dict = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
    if not refresh and key in cached:
        return cached[key]
    cached[key] = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        tmp.replace(path)
    except OSError as e:  # a read-only cache is no reason to fail a profile
        log.warning("could not cache the measurement in %s: %s", path, e)
    return cached[key]
