"""`edge export`: reference model → family graphs → ONNX / ExecuTorch files → checked bundle.

Every exported file is run once on the graph's example inputs and compared with the eager
module before the bundle is committed; the max abs error is recorded in the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.bundle import Bundle, BundleWriter
from edge.errors import EdgeError
from edge.export.families import get_family
from edge.export.families.checkpoint import recommended_sampling
from edge.export.graph import Graph
from edge.presets import get_preset

log = logging.getLogger(__name__)

EXPORT_BACKENDS = ("onnx", "qnn", "executorch", "coreml", "torch")
# What `--backend all` exports (qnn needs an npu recipe, coreml the coreml extra: both are asked for by name).
ALL_BACKENDS = ("onnx", "executorch", "torch")
# An exported fp32 graph that differs from eager by more than this (relative to the output's
# magnitude) is a broken export, and the bundle is not written.
PARITY_TOLERANCE = 1e-3


def parse_backends(backend: str) -> list[str]:
    if backend == "all":
        return list(ALL_BACKENDS)
    names = [b.strip() for b in backend.split(",") if b.strip()]
    bad = [b for b in names if b not in EXPORT_BACKENDS]
    if bad or not names:
        raise EdgeError(f"unknown backend '{backend}'; choose from {', '.join(EXPORT_BACKENDS)}, a comma list, "
                        "or all")
    return names


def _run_file(backend: str, graph: Graph, path: Path, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    from edge.runtime.sessions import ExecutorchSession, OnnxSession

    spec = graph.to_json()
    sess = (OnnxSession if backend == "onnx" else ExecutorchSession)(str(path), spec, threads=None)
    out = sess.run({n: a.numpy() for n, a in zip(graph.input_names(), args, strict=True)})
    return [out[n] for n in graph.output_names()]


def check_parity(backend: str, graph: Graph, path: Path) -> float:
    """Max abs error of the exported file against eager on the example inputs (raises if too large)."""
    args = graph.example_args()
    with torch.inference_mode():
        ref = [r.numpy() for r in graph.module(*args)]
    got = _run_file(backend, graph, path, args)
    err = 0.0
    for name, r, g in zip(graph.output_names(), ref, got, strict=True):
        if r.dtype.kind in "iu":
            if not np.array_equal(r, g):
                raise EdgeError(f"{backend} export of {graph.name} disagrees with eager on integer output {name}")
            continue
        e = float(np.max(np.abs(r - g))) if r.size else 0.0
        if e > PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(r))) if r.size else 1.0):
            raise EdgeError(f"{backend} export of {graph.name} disagrees with eager on {name} (max abs err {e:.3g})")
        err = max(err, e)
    return err


def export_bundle(
    target: str,
    out: str | Path,
    backends: Sequence[str] = ("onnx",),
    checkpoint: Path | None = None,
    options: dict[str, Any] | None = None,
    force: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
) -> Bundle:
    """Export preset `target` (its weights from `checkpoint` if given, else the preset's shipped weights, else
    seeded random ones) for `backends` into bundle `out`."""
    preset = get_preset(target)
    if checkpoint is None:
        checkpoint = preset.weights_dir
    family = get_family(preset.family)
    opts = {**preset.options, **(options or {})}
    # --out may never hold or sit inside the weights it is exported from
    with BundleWriter(out, overwrite=force, protect=[checkpoint] if checkpoint is not None else []) as writer:
        on_step(f"building the {preset.name} reference model")
        if checkpoint is not None:
            model = family.load_reference(checkpoint)
        else:
            torch.manual_seed(preset.seed)
            model = family.build_reference(preset.config, preset.seed)
        graphs, model_manifest = family.graphs(model, opts)
        tokenizer = family.tokenizer(model, checkpoint, writer)
        opts = {**opts, **model_manifest.pop("export_options", {})}

        manifest_graphs: dict[str, Any] = {}
        for graph in graphs:
            entry = {**graph.to_json(), "recipe": "fp32", "files": {}, "parity_max_abs_err": {}, "export_seconds": {}}
            for backend in dict.fromkeys("onnx" if b == "qnn" else b for b in backends):  # qnn runs the onnx files
                if backend == "torch":
                    continue
                on_step(f"{graph.name} → {backend}")
                t = time.perf_counter()
                if backend == "onnx":
                    from edge.export.onnx import export_onnx

                    files = export_onnx(graph, writer.path(f"{graph.name}.onnx"))
                elif backend == "coreml":
                    from edge.export.coreml import export_coreml

                    files, delegated = export_coreml(graph, writer.path(f"{graph.name}.coreml.pte"))
                    entry["export_seconds"][backend] = round(time.perf_counter() - t, 2)
                    entry["files"][backend] = [p.name for p in files]
                    entry.setdefault("delegation", {})[backend] = delegated
                    # Core ML runs on Apple hardware only: its parity is checked there (`edge eval`), not here.
                    continue
                else:
                    from edge.export.executorch import export_executorch

                    files = export_executorch(graph, writer.path(f"{graph.name}.pte"))
                entry["export_seconds"][backend] = round(time.perf_counter() - t, 2)
                entry["files"][backend] = [p.name for p in files]
                on_step(f"{graph.name} → {backend}: parity check")
                entry["parity_max_abs_err"][backend] = check_parity(backend, graph, files[0])
            manifest_graphs[graph.name] = entry

        manifest: dict[str, Any] = {
            "family": preset.family,
            "preset": preset.name,
            "model": model_manifest,
            "tokenizer": tokenizer,
            "export_options": opts,
            "graphs": manifest_graphs,
        }
        if "coreml" in backends:
            from edge.export.coreml import coreml_settings

            manifest["coreml"] = coreml_settings()
        sampling = recommended_sampling(checkpoint)
        if sampling:
            manifest["sampling"] = sampling
        if "torch" in backends:
            on_step("saving the eager reference (torch backend)")
            model.save_pretrained(writer.path("reference"), safe_serialization=True)
            manifest["reference"] = {"dir": "reference"}
        if not any(e["files"] for e in manifest_graphs.values()) and "reference" not in manifest:
            raise EdgeError("nothing to export; choose --backend onnx, executorch, torch or all")
        return writer.commit(manifest)
