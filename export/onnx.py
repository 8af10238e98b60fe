"""Write one `Graph` as an ONNX model with external weight data (torch.onnx dynamo exporter)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx

from edge.export.graph import Graph

log = logging.getLogger(__name__)
OPSET = 18


def export_onnx(graph: Graph, path: Path) -> list[Path]:
    """Export `graph` to `path` (+ `path.data` for the weights). Returns the files written."""
    import torch

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
    files = save_onnx(program.model_proto, path)
    log.debug("onnx %s: %s", graph.name, ", ".join(f"{p.name} {p.stat().st_size} B" for p in files))
    return files


def save_onnx(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model` to `path` with its weights in `path.data` beside it. Returns the files written."""
    path = path.resolve()
    data = path.with_name(path.name + ".data")
    for p in (path, data):
        p.unlink(missing_ok=True)
    # onnx resolves the external-data location against the working directory, not the model's folder.
    with contextlib.chdir(path.parent):
        onnx.save_model(model, path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    return [path] + ([data] if data.exists() else [])
