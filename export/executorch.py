"""Write one `Graph` as an ExecuTorch program (`.pte`), lowered to the XNNPACK delegate."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower

from edge.export.graph import Graph

log = logging.getLogger(__name__)


def export_program(graph: Graph) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(graph.module, graph.example_args(), strict=False)


def export_executorch(graph: Graph, path: Path, program: torch.export.ExportedProgram | None = None) -> list[Path]:
    """Export `graph` (or an already exported/quantized `program` of it) to `path`."""
    program = program if program is not None else export_program(graph)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path.write_bytes(edge.to_executorch().buffer)
    log.debug("executorch %s: %s %d B", graph.name, path.name, path.stat().st_size)
    return [path]
