"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.bundle import BundleWriter

SPEC = {"inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        "state": [{"name": "s", "shape": [2], "dtype": "float32"}]}


def write_small_bundle(out: Path) -> Path:
    """A structurally valid bundle with made-up graph bytes (for format tests, not for running)."""
    with BundleWriter(out) as w:
        w.path("g.onnx").write_bytes(b"not really onnx" * 10)
        w.path("g.onnx.data").write_bytes(bytes(range(200)))
        w.commit({
            "family": "mimi", "preset": "test", "model": {"sample_rate": 24000},
            "tokenizer": {"kind": "none"},
            "graphs": {"g": {**SPEC, "recipe": "fp32", "files": {"onnx": ["g.onnx", "g.onnx.data"]}}},
        })
    return out


def edge_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the real `edge` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, input=stdin, timeout=600)
