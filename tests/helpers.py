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


CODEC_MODEL = {"sample_rate": 24000, "frame_rate": 12.5, "samples_per_frame": 1920, "num_codebooks": 8,
               "codebook_size": 64, "frames_per_call": 1}


def write_small_bundle(out: Path, overwrite: bool = False) -> Path:
    """A valid bundle of one small ONNX graph (y = x, its state carried through) and a side file of made-up
    bytes (for format tests)."""
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (("x", [1, 4]), ("s", [2]))]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (("y", [1, 4]),
                                                                                          ("s_next", [2]))]
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["s_next"])]
    model = helper.make_model(helper.make_graph(nodes, "g", io, outs), opset_imports=[helper.make_opsetid("", 17)])
    with BundleWriter(out, overwrite) as w:
        w.path("g.onnx").write_bytes(model.SerializeToString())
        w.path("g.onnx.data").write_bytes(bytes(range(200)))
        w.commit({
            "family": "mimi", "preset": "test", "model": CODEC_MODEL,
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
