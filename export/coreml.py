"""Write one `Graph` as an ExecuTorch program lowered with the Core ML partitioner (Apple Neural Engine).

Lowering runs anywhere coremltools installs (Linux included); running needs Apple hardware (the Core ML
delegate of ExecuTorch's runtime). What the partitioner leaves out of the delegate runs on ExecuTorch's portable
CPU kernels, so the delegated fraction (ops inside Core ML against all compute ops) is recorded per graph.
"""

from __future__ import annotations

import logging
import operator
from pathlib import Path
from typing import Any

import torch

from edge.errors import EdgeError
from edge.export.graph import Graph

log = logging.getLogger(__name__)

# iPhone (iOS 17) and Mac (macOS 14) share Core ML's 2023 op set; both names are recorded in the manifest.
MINIMUM_DEPLOYMENT_TARGET = "iOS17"
DEPLOYMENT = {"ios": "17", "macos": "14"}
COMPUTE_UNITS = "CPU_AND_NE"  # Neural Engine first, CPU for what it cannot take; never the GPU
COMPUTE_PRECISION = "FLOAT16"  # what the Neural Engine computes in


def _coremltools():
    try:
        import coremltools
    except ImportError:
        raise EdgeError("the coreml backend needs coremltools, which is not installed: "
                        "pip install 'edge-codec-tts[coreml]'") from None
    return coremltools


def coreml_settings() -> dict[str, Any]:
    """What a coreml bundle records about its lowering (manifest `coreml`)."""
    return {"minimum_deployment_target": DEPLOYMENT, "compute_units": COMPUTE_UNITS,
            "compute_precision": COMPUTE_PRECISION.lower()}


def delegation(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Compute ops inside Core ML delegates against those left to ExecuTorch's CPU kernels (tuple unpacking
    of a delegate's outputs is not an op)."""
    inside, left = 0, {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            lowered = getattr(graph_module, node.name)
            inside += sum(1 for n in lowered.original_module.graph.nodes
                          if n.op == "call_function" and n.target is not operator.getitem)
        elif node.op == "call_function" and node.target is not operator.getitem \
                and "executorch_call_delegate" not in str(node.target):
            name = str(getattr(node.target, "__name__", node.target))
            left[name] = left.get(name, 0) + 1
    total = inside + sum(left.values())
    return {"delegated_ops": inside, "total_ops": total, "fraction": inside / total if total else 1.0,
            "not_delegated": left}


# Core ML's tensors have at most five axes.
MAX_RANK = 5


def _rank(value: Any) -> int:
    vals = value if isinstance(value, (list, tuple)) else [value]
    return max((v.dim() for v in vals if isinstance(v, torch.Tensor)), default=0)


def _partitioner(specs: list) -> Any:
    """The Core ML partitioner, minus the nodes that touch a tensor of more than MAX_RANK axes (a CSM KV
    cache, `(layers, 2, batch, heads, slots, dim)`): they select a layer from it on the way in and stack the
    layers on the way out, so they sit at the edge of the graph and run on ExecuTorch's CPU kernels."""
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    class _Partitioner(CoreMLPartitioner):
        def partition(self, exported_program):
            result = super().partition(exported_program)
            for node in exported_program.graph_module.graph.nodes:
                if "delegation_tag" not in node.meta:
                    continue
                args = [a for a in node.all_input_nodes]
                if _rank(node.meta.get("val")) > MAX_RANK or any(_rank(a.meta.get("val")) > MAX_RANK for a in args):
                    del node.meta["delegation_tag"]
            return result

    return _Partitioner(compile_specs=specs)


def export_coreml(graph: Graph, path: Path) -> tuple[list[Path], dict[str, Any]]:
    """Lower `graph` with the Core ML partitioner into `path`; returns the files and its delegation."""
    ct = _coremltools()
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.exir import to_edge_transform_and_lower

    from edge.export.executorch import export_program

    specs = CoreMLBackend.generate_compile_specs(
        compute_unit=getattr(ct.ComputeUnit, COMPUTE_UNITS),
        minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
        compute_precision=getattr(ct.precision, COMPUTE_PRECISION),
    )
    edge = to_edge_transform_and_lower(export_program(graph), partitioner=[_partitioner(specs)])
    info = delegation(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    log.debug("coreml %s: %s %d B, %d of %d ops delegated", graph.name, path.name, path.stat().st_size,
              info["delegated_ops"], info["total_ops"])
    return [path], info
