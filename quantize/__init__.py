"""`edge quantize`: a bundle → a new bundle whose graphs are quantized one by one with their own recipe.

ONNX graphs are quantized from their `.onnx` files; ExecuTorch graphs are rebuilt from the bundle's
`reference/` (torch backend) weights, quantized as torch modules and lowered to XNNPACK again. Files of
graphs that keep fp32 (and the tokenizer, the reference) are copied unchanged; the manifest keeps its
contract and records each graph's recipe.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.bundle import MANIFEST, Bundle, BundleWriter, load_bundle
from edge.errors import EdgeError
from edge.outputs import check_dir_out
from edge.quantize.recipes import (
    BACKEND_RECIPES,
    DEFAULT_GROUP_SIZE,
    NPU_RECIPES,
    check_backend,
    check_group_size,
    parse_recipe,
    recipe_label,
    recipe_targets,
)

log = logging.getLogger(__name__)

__all__ = ["BACKEND_RECIPES", "evaluate", "parse_recipe", "plan", "quantize_bundle"]

QUANTIZABLE = tuple(BACKEND_RECIPES)


def plan(bundle: Bundle, recipe: str, backends: Sequence[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Check `recipe` against `bundle`: (graph -> recipe for the bundle's graphs, backends to write)."""
    wanted = parse_recipe(recipe)
    graphs = bundle.graphs
    for key, names in recipe_targets(recipe).items():
        if not any(n in graphs for n in names):
            raise EdgeError(f"recipe key '{key}' names no graph of bundle {bundle.root} (it has: "
                            f"{', '.join(graphs)}); drop it or quantize a bundle that has it")
    per_graph = {name: wanted.get(name, "fp32") for name in graphs}
    have = [b for b in QUANTIZABLE if any(b in g["files"] for g in graphs.values())]
    if backends is None:
        chosen = have
    else:
        chosen = list(dict.fromkeys(backends))
        for b in chosen:
            if b not in QUANTIZABLE:
                raise EdgeError(f"backend '{b}' cannot be quantized; choose from {', '.join(QUANTIZABLE)}")
            if b not in have:
                raise EdgeError(f"bundle {bundle.root} has no {b} graphs (it has: {', '.join(have) or 'none'})")
    if not chosen:
        raise EdgeError(f"bundle {bundle.root} has no onnx or executorch graphs to quantize")
    for name, r in per_graph.items():
        if r != "fp32" and graphs[name]["recipe"] != "fp32":
            raise EdgeError(f"graph {name} of {bundle.root} is already quantized ({graphs[name]['recipe']}); "
                            "quantize the fp32 bundle it came from")
        for b in chosen:
            if b in graphs[name]["files"]:
                check_backend(b, r)
    if "executorch" in chosen and "reference" not in bundle.manifest and any(
            r != "fp32" and "executorch" in graphs[n]["files"] for n, r in per_graph.items()):
        raise EdgeError(f"bundle {bundle.root} has no torch reference, which ExecuTorch quantization starts from; "
                        "re-export it with --backend executorch,torch (or quantize only its onnx graphs)")
    return per_graph, chosen


def quantize_bundle(
    src: str | Path,
    recipe: str,
    out: str | Path,
    group_size: int = DEFAULT_GROUP_SIZE,
    force: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
    backends: Sequence[str] | None = None,
    qnn_socs: Sequence[str] = (),
) -> Bundle:
    """Quantize bundle `src` with `recipe` (see `parse_recipe`) into a new bundle `out`.

    `backends` limits which of the bundle's onnx/executorch graphs are kept (default: all it has);
    int4 groups are `group_size` wide along the input dimension. `qnn_socs` names Snapdragon SoCs to precompile
    each npu graph's QNN context for (`edge.quantize.qnn_context`).
    """
    group_size = check_group_size(group_size)
    bundle = load_bundle(src)
    per_graph, chosen = plan(bundle, recipe, backends)
    if qnn_socs:
        from edge.quantize.qnn_context import check_soc

        qnn_socs = [check_soc(s) for s in dict.fromkeys(qnn_socs)]
        if "onnx" not in chosen or any(r not in NPU_RECIPES for r in per_graph.values()):
            raise EdgeError("precompiled QNN contexts are for onnx graphs quantized with an npu recipe: use "
                            "--recipe npu-a16w8 (or npu-int8) for every graph")
    check_dir_out(Path(out), force, protect=[bundle.root])  # before the slow calibration
    calibration: dict[str, list] = {}
    if any(r in NPU_RECIPES for r in per_graph.values()):
        from edge.quantize.calibrate import collect

        on_step("calibrating: running the fp32 loop to record real graph inputs")
        calibration = collect(bundle)
    modules: dict[str, Any] = {}
    if "executorch" in chosen and any(r != "fp32" for r in per_graph.values()):
        modules = _reference_graphs(bundle, on_step)

    manifest = {k: copy.deepcopy(v) for k, v in bundle.manifest.items()
                if k not in ("format_version", "edge_version", "created", "files")}
    rewritten: set[str] = set()
    with BundleWriter(out, overwrite=force, protect=[bundle.root]) as writer:
        for name, r in per_graph.items():
            entry = manifest["graphs"][name]
            for b in [b for b in list(entry["files"]) if b not in chosen]:
                rewritten.update(entry["files"].pop(b))
                entry.get("parity_max_abs_err", {}).pop(b, None)
            if r == "fp32":
                continue
            notes: dict[str, list[str]] = {}
            for b in chosen:
                if b not in entry["files"]:
                    continue
                on_step(f"{name} → {b} {recipe_label(r, group_size)}")
                rewritten.update(entry["files"][b])
                notes[b] = []
                if b == "onnx":
                    from edge.quantize.onnx import quantize_file

                    files = quantize_file(bundle.graph_file(name, b), writer.path(f"{name}.onnx"), r, group_size,
                                          calibration.get(name), notes[b].append)
                else:
                    from edge.quantize.executorch import quantize_graph

                    files = quantize_graph(modules[name], r, group_size, writer.path(f"{name}.pte"), notes[b].append)
                entry["files"][b] = [p.name for p in files]
                entry.get("parity_max_abs_err", {}).pop(b, None)
            for soc in qnn_socs:
                from edge.quantize.qnn_context import compile_context

                on_step(f"{name} → qnn context for {soc}")
                ctx = compile_context(writer.path(f"{name}.onnx"), writer.path(f"qnn/{soc}/{name}_ctx.onnx"), soc)
                entry.setdefault("qnn_context", {})[soc] = [p.relative_to(writer.tmp).as_posix() for p in ctx]
            entry["recipe"] = recipe_label(r, group_size)
            entry["quantization"] = {"group_size": group_size, "notes": notes} if r == "int4" else {"notes": notes}
        on_step("copying unchanged files")
        for rel in bundle.manifest["files"]:
            if rel in rewritten or rel == MANIFEST:
                continue
            dst = writer.path(rel)
            if not dst.exists():
                shutil.copyfile(bundle.path(rel), dst)
        return writer.commit(manifest)


def _reference_graphs(bundle: Bundle, on_step: Callable[[str], None]) -> dict[str, Any]:
    """The family's graphs rebuilt from the bundle's reference weights (what ExecuTorch quantizes)."""
    try:
        from edge.export.reference import reference_graphs
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EdgeError(f"ExecuTorch quantization needs the export extra ({e.name} missing): "
                        "pip install 'edge-codec-tts[export]'") from None
    on_step("rebuilding the graphs from the torch reference")
    return reference_graphs(bundle)


def evaluate(bundle: str | Path, against: str | Path, backend: str = "onnx", frames: int = 20) -> dict:
    """What quantization cost: see `edge.quantize.accuracy.evaluate`."""
    from edge.quantize.accuracy import evaluate as _evaluate

    return _evaluate(bundle, against, backend, frames)
