"""Write one `Graph` as an ONNX model with external weight data (torch.onnx dynamo exporter)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edge.export.graph import Graph

log = logging.getLogger(__name__)
OPSET = 18


def export_onnx(graph: Graph, path: Path) -> list[Path]:
    """Export `graph` to `path` (+ `path.data` for the weights). Returns the files written."""
    # torch.onnx warns about every torchvision op it cannot register; that is not about this export.
    logging.getLogger("torch.onnx").setLevel(max(logging.ERROR, log.getEffectiveLevel()))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module,
            graph.example_args(),
            dynamo=True,
            input_names=graph.input_names(),
            output_names=graph.output_names(),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    data = path.with_name(path.name + ".data")
    # onnx resolves the external-data location against the working directory, not the model's folder.
    with contextlib.chdir(path.parent):
        onnx.save_model(
            model,
            path.name,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    files = [path] + ([data] if data.exists() else [])
    log.debug("onnx %s: %s", graph.name, ", ".join(f"{p.name} {p.stat().st_size} B" for p in files))
    return files
