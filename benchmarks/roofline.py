"""Bytes the backbone `lm_step` reads per call: its weights (as quantized) and its KV cache.

A decode step on a CPU streams every weight from memory once, so `bytes / read bandwidth` is the
fastest it can go. Weights are counted from the graph's files, except the codebook embedding
table, of which one step reads only the `K` rows of the frame it embeds:

- ONNX: every initializer's stored size; an initializer read only by `Gather` (a lookup table, or its
  quantized scales) counts for `K` of its rows;
- ExecuTorch: the `.pte` size less the table rows not read, the table's stored size being computed
  from its shape and the graph's recipe (fp32, fp16, or int8 / int4 rows with one fp16 scale per group).

The KV cache counts whole: the graph has a fixed capacity and reads every slot (masking the empty ones).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from edge.bundle import Bundle
from edge.quantize.tables import table_group

# A Gather-only initializer at least this large is a lookup table (smaller ones are shape constants).
MIN_TABLE_ELEMENTS = 1 << 16


def _onnx_weight_bytes(path: str, rows_read: int) -> int:
    import onnx

    model = onnx.load(path, load_external_data=False)
    readers: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers[name].add((node.op_type, i))
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            nbytes = int({e.key: e.value for e in t.external_data}["length"])
        else:
            nbytes = onnx.numpy_helper.to_array(t).nbytes
        elements = math.prod(t.dims)
        if readers[t.name] == {("Gather", 0)} and elements >= MIN_TABLE_ELEMENTS:
            nbytes = nbytes * rows_read // t.dims[0]
        total += nbytes
    return total


def _table_bytes_per_element(recipe: str, dim: int) -> float:
    """Stored bytes per element of an embedding table under `recipe` (see edge.quantize.tables)."""
    if recipe == "fp32":
        return 4.0
    if recipe == "fp16":
        return 2.0
    if recipe == "int8":
        return 1 + 2 / table_group(dim, 0, 8)
    if recipe.startswith("int4-g"):
        return 0.5 + 2 / table_group(dim, int(recipe.removeprefix("int4-g")), 4)
    raise ValueError(f"no table layout known for recipe {recipe}")


def step_bytes(bundle: Bundle, backend: str) -> dict[str, Any]:
    """Weight, KV and total bytes one `lm_step` call reads (`torch` counts as the fp32 ONNX weights)."""
    m, spec = bundle.model, bundle.graphs["lm_step"]
    k, vocab = m["num_codebooks"], m["audio_vocab_size"]
    dim = spec["outputs"][1]["shape"][-1]  # hidden (1, D)
    kv = spec["state"][0]
    kv_bytes = math.prod(kv["shape"]) * np.dtype(kv["dtype"]).itemsize
    files = spec["files"]
    if backend in ("onnx", "torch") and "onnx" in files:
        weights = _onnx_weight_bytes(str(bundle.graph_file("lm_step", "onnx")), k)
        source = "onnx"
    else:
        table = k * vocab * dim * _table_bytes_per_element(spec["recipe"], dim)
        weights = int(bundle.file_bytes("lm_step", "executorch") - table * (1 - 1 / vocab))
        source = "executorch"
    return {"weight_bytes": weights, "kv_bytes": kv_bytes, "bytes_per_step": weights + kv_bytes,
            "bytes_from": source, "recipe": spec["recipe"]}
