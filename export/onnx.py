"""Write one `Graph` as an ONNX model with external weight data (torch.onnx dynamo exporter)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
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
    model = program.model_proto
    if n := vectorise_elu(model):
        log.debug("onnx %s: %d Elu rewritten as Relu(x) + Exp(Min(x, 0)) - 1", graph.name, n)
    files = save_onnx(model, path)
    log.debug("onnx %s: %s", graph.name, ", ".join(f"{p.name} {p.stat().st_size} B" for p in files))
    return files


def vectorise_elu(model: onnx.ModelProto) -> int:
    """Rewrite each `Elu` (alpha 1) as ``Relu(x) + (Exp(Min(x, 0)) - 1)``, in place; returns how many.

    onnxruntime's CPU `Elu` evaluates exp one element at a time, while its `Exp` is vectorised: on a
    (1, 64, 1920) tensor, one thread, 320 us against 134 us for the five operators (Mimi's SEANet decoder runs
    13 ELUs per frame). Equal to Elu within float rounding.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    zero, one = "edge_elu_zero", "edge_elu_one"
    nodes, count = [], 0
    for node in graph.node:
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        if node.op_type != "Elu" or node.domain not in ("", "ai.onnx") or alpha != 1.0:
            nodes.append(node)
            continue
        x, y, tag = node.input[0], node.output[0], f"{node.name or 'elu'}_{count}"
        nodes += [
            helper.make_node("Min", [x, zero], [f"{tag}_neg"], name=f"{tag}_min"),
            helper.make_node("Exp", [f"{tag}_neg"], [f"{tag}_exp"], name=f"{tag}_exp"),
            helper.make_node("Sub", [f"{tag}_exp", one], [f"{tag}_expm1"], name=f"{tag}_sub"),
            helper.make_node("Relu", [x], [f"{tag}_relu"], name=f"{tag}_relu"),
            helper.make_node("Add", [f"{tag}_relu", f"{tag}_expm1"], [y], name=f"{tag}_add"),
        ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend([numpy_helper.from_array(np.zeros((), np.float32), zero),
                                  numpy_helper.from_array(np.ones((), np.float32), one)])
    return count


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
