"""The graph contract every family adapter speaks (see DESIGN.md, "The graphs").

A family adapter turns one reference model into a few `Graph`s. Each graph is a plain
`nn.Module` whose `forward` takes its `inputs` in order, followed by its `state` tensors in
order, and returns a tuple of its `outputs` in order followed by the new `state` tensors in
the same order. Nothing is hidden inside the module between calls: a streaming module's
caches and convolution tails travel in and out as tensors, with fixed shapes, starting from
zeros. That makes every graph exportable as-is to ONNX and ExecuTorch and drivable by one
runtime loop.

State named in `state` is held by the runtime from one call to the next (`edge.runtime.state`; the
names are the bundle's, `edge.bundle.state_output`): a carried state comes back whole as
``<name>_next``; a *written* one (a KV cache, `TensorSpec.write`) comes back as only its new entries,
``<name>_new``, plus an int64 output saying where they go, and the runtime writes them in place, so
no graph copies a cache. A graph may also
*produce* another graph's state (``lm_prefill`` produces the KV cache ``lm_step`` carries): it
lists it in `outputs` and the manifest's `state_from` says which graph consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edge.bundle import state_output

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "int64": torch.int64}


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one graph input, output or state tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # State only: (axis, index output) if the graph returns just its new entries along `axis`, their
    # positions in the int64 output named `index` (a written state); None if it returns the whole tensor.
    write: tuple[int, str] | None = None

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=DTYPES[self.dtype])

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.write is not None:
            spec["write"] = {"axis": self.write[0], "index": self.write[1]}
        return spec


@dataclass
class Graph:
    """One exportable graph: a module plus the specs of what goes in and out of it."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[TensorSpec] = field(default_factory=list)
    # Example values for `inputs` (state examples are zeros); used for export tracing.
    example_inputs: tuple[torch.Tensor, ...] = ()

    def example_args(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.example_inputs) + tuple(s.zeros() for s in self.state)

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs] + [s.name for s in self.state]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs] + [state_output(s.to_json()) for s in self.state]

    def parameters(self) -> int:
        """Weights the graph holds: its module's float parameters and buffers (codebooks), each counted once."""
        tensors = {id(t): t for t in [*self.module.parameters(), *self.module.buffers()] if t.is_floating_point()}
        return sum(t.numel() for t in tensors.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "state": [s.to_json() for s in self.state],
            "parameters": self.parameters(),
        }

