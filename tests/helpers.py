"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.bundle import BundleWriter
from edge.runtime.state import State

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


class GraphRunner:
    """Calls a `Graph`'s module (or `fn`, with the same arguments) call after call as the runtime does, its
    state held by an `edge.runtime.state.State`; returns each call's regular outputs."""

    def __init__(self, graph, fn=None):
        self.graph, self.fn = graph, fn or graph.module
        self.state = State([s.to_json() for s in graph.state])

    def __call__(self, *inputs):
        import torch

        outs = self.fn(*inputs, *(torch.from_numpy(a) for a in self.state.feeds().values()))
        self.state.update({n: o.numpy() for n, o in zip(self.graph.output_names(), outs, strict=True)})
        return outs[: len(self.graph.outputs)]
