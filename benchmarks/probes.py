"""Focused measurements behind changes recorded in benchmarks/notes.md (each a ratio inside one run).

    python benchmarks/probes.py heads [--recipe int8|int4]   # ExecuTorch depth_step: how the codebook heads run
    python benchmarks/probes.py elu                          # onnxruntime Elu against its vectorised rewrite
    python benchmarks/probes.py caches [--graph codec_decoder|lm_step|depth_step] [--recipe int8|int4|fp32]
                                                             # KV caches written by the runtime or the graph
    python benchmarks/probes.py int4                         # ExecuTorch lm_step: int4 per group of 32 or per channel

- heads: csm-medium's `depth_step` quantized for ExecuTorch three ways (all heads as one linear, edge's
  default; one gathered head dequantized in the graph; one gathered fp32 head), timed interleaved, 32 calls
  per frame (as the loop makes them), with each program's size;
- elu: an `Elu` graph against `export.onnx.vectorise_elu`'s rewrite of it on a Mimi-decoder-sized tensor;
- caches: one of csm-medium's graphs (default its real-config Mimi `codec_decoder`) on onnxruntime with its KV
  caches as written states (the graph returns the new slots, the runtime writes them: edge's contract) against
  the same graph wrapped to return every cache whole through a scatter (the contract before), call after call
  from the zero state, interleaved;
- int4: csm-medium's `lm_step` for ExecuTorch with torchao 8da4w weights per group of 32 (edge's default) and
  per output channel, timed interleaved, with each one's hidden-state error against fp32.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _interleaved(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns round by round."""
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def heads(recipe: str, rounds: int) -> None:
    import torch
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    import edge.quantize.executorch as qe
    from edge.export.families import get_family
    from edge.export.families.csm_lm import CodebookHeads
    from edge.presets import get_preset

    preset = get_preset("csm-medium")
    family = get_family(preset.family)
    graphs, _ = family.graphs(family.build_reference(preset.config, preset.seed), preset.options)
    graph = next(g for g in graphs if g.name == "depth_step")
    replace_heads, replace_embeddings = qe._replace_heads, qe._replace_embeddings

    def fp32_heads(module, bits, group, notes):  # quantize every table but the heads'
        heads = [m for m in module.modules() if isinstance(m, CodebookHeads)]
        tables = [m.table for m in heads]
        for m in heads:
            del m.table
        replace_embeddings(module, bits, group, notes)
        for m, table in zip(heads, tables, strict=True):
            m.table = table

    variants = {"all heads as one linear (default)": (replace_heads, replace_embeddings),
                "one gathered head, dequantized in the graph": (lambda module, notes: None, replace_embeddings),
                "one gathered fp32 head": (lambda module, notes: None, fp32_heads)}
    programs, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (swap_heads, swap_tables)) in enumerate(variants.items()):
            qe._replace_heads, qe._replace_embeddings = swap_heads, swap_tables
            try:
                path = Path(tmp) / f"{i}.pte"
                qe.quantize_graph(graph, recipe, 32, path)
            finally:
                qe._replace_heads, qe._replace_embeddings = replace_heads, replace_embeddings
            programs[name], sizes[name] = _load_for_executorch(str(path)), path.stat().st_size
    k = preset.config["num_codebooks"]
    hidden = torch.randn(1, preset.config["hidden_size"])
    kv0 = torch.zeros(graph.state[0].shape)

    def frame(program) -> Callable[[], None]:
        def run() -> None:  # the cache's contents do not change the work: every step reads the same zeros
            for p in range(k):
                program.forward((hidden, torch.tensor([p % 7]), torch.tensor([p]), kv0))
        return run

    medians = _interleaved({name: frame(p) for name, p in programs.items()}, rounds)
    for name, seconds in medians.items():
        print(f"{recipe} {name}: {1000 * seconds / k:.2f} ms per depth_step call, program {sizes[name] / 1e6:.0f} MB")


def elu(rounds: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edge.export.onnx import vectorise_elu
    from edge.runtime.sessions import onnx_options

    shape = [1, 64, 1920]  # the last stage of the Mimi decoder, one 80 ms frame

    def model(rewrite: bool):
        spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "y")]
        graph = helper.make_graph([helper.make_node("Elu", ["x"], ["y"], name="elu")], "g", spec[:1], spec[1:])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        if rewrite:
            vectorise_elu(proto)
        return ort.InferenceSession(proto.SerializeToString(), onnx_options(1), providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sessions = {"Elu": model(False), "Relu(x) + Exp(Min(x, 0)) - 1": model(True)}
    ref, out = (s.run(None, {"x": x})[0] for s in sessions.values())
    medians = _interleaved({name: (lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}, rounds)
    for name, seconds in medians.items():
        print(f"{name}: {1e6 * seconds:.0f} us per call (one thread)")
    print(f"max abs difference {float(np.abs(ref - out).max()):.1e}")


def caches(graph_name: str, recipe: str, calls: int, rounds: int) -> None:
    import dataclasses

    import numpy as np
    import torch

    from edge.export.families import get_family
    from edge.export.graph import Graph
    from edge.export.onnx import export_onnx
    from edge.presets import get_preset
    from edge.quantize.onnx import quantize_file
    from edge.runtime.sessions import OnnxSession
    from edge.runtime.state import State

    preset = get_preset("csm-medium")
    family = get_family(preset.family)
    graphs, _ = family.graphs(family.build_reference(preset.config, preset.seed), preset.options)
    written = next(g for g in graphs if g.name == graph_name)
    indices = {s.write[1] for s in written.state if s.write is not None}
    kept = [i for i, s in enumerate(written.outputs) if s.name not in indices]

    class WholeCaches(torch.nn.Module):
        """The graph returning each cache whole, its new entries written by a scatter inside the graph."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = written.module

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outs = self.inner(*args)
            named = dict(zip([s.name for s in written.outputs], outs, strict=False))
            state, new = args[len(written.inputs):], outs[len(written.outputs):]
            out = [outs[i] for i in kept]
            for spec, old, n in zip(written.state, state, new, strict=True):
                if spec.write is None:
                    out.append(n)
                    continue
                axis, index = spec.write
                shape = [1] * n.dim()
                shape[axis] = -1
                out.append(old.scatter(axis, named[index].view(shape).expand(n.shape), n))
            return tuple(out)

    whole = Graph(graph_name, WholeCaches().eval(), written.inputs, [written.outputs[i] for i in kept],
                  [dataclasses.replace(s, write=None) for s in written.state], written.example_inputs)
    inputs = {s.name: t.numpy() for s, t in zip(written.inputs, written.example_inputs, strict=True)}
    runs, firsts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, g in {"caches written by the runtime (edge)": written, "caches returned whole": whole}.items():
            path = Path(tmp) / f"{len(runs)}.onnx"
            export_onnx(g, path)
            if recipe != "fp32":
                quantize_file(path, path.with_suffix(".q.onnx"), recipe, 32)
                path = path.with_suffix(".q.onnx")
            session, state = OnnxSession(str(path), g.to_json()), State(g.to_json()["state"])

            def run(session=session, state=state) -> np.ndarray:
                for _ in range(calls):
                    out = session.run({**inputs, **state.feeds()})
                    state.update(out)
                return out[written.outputs[0].name]  # a regular output, first in both variants

            runs[name], firsts[name] = run, run()  # `calls` calls from zero state: also the warm-up
        medians = _interleaved(runs, rounds)
    for name, seconds in medians.items():
        print(f"{graph_name} {recipe} {name}: {1000 * seconds / calls:.2f} ms per call")
    a, b = firsts.values()
    print(f"max abs difference of the first output after {calls} calls: {float(np.abs(a - b).max()):.1e}")


def int4(rounds: int) -> None:
    import numpy as np
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis, PerGroup, quantize_

    import edge.quantize.executorch as qe
    from edge.export.families import get_family
    from edge.presets import get_preset
    from edge.runtime.sessions import ExecutorchSession

    preset = get_preset("csm-medium")
    family = get_family(preset.family)
    graphs, manifest = family.graphs(family.build_reference(preset.config, preset.seed), preset.options)
    graph = next(g for g in graphs if g.name == "lm_step")
    spec, default_int4 = graph.to_json(), qe._int4
    sessions, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, granularity in {"per group of 32 (default)": PerGroup(32), "per channel": PerAxis(0)}.items():
            def int4_linears(module, args, group, notes, granularity=granularity):
                config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=granularity)
                quantize_(module, config, filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
                return qe._export(module, args)

            qe._int4 = int4_linears
            try:
                path = Path(tmp) / f"{len(sessions)}.pte"
                qe.quantize_graph(graph, "int4", 32, path)
            finally:
                qe._int4 = default_int4
            sessions[name], sizes[name] = ExecutorchSession(str(path), spec), path.stat().st_size
        rng = np.random.default_rng(0)
        feeds = {"codes": np.ones((1, manifest["num_codebooks"]), np.int64), "position": np.array([200]),
                 "kv": (0.5 * rng.standard_normal(spec["state"][0]["shape"])).astype(np.float32)}
        with torch.no_grad():
            want = graph.module(*(torch.from_numpy(feeds[n]) for n in ("codes", "position", "kv")))[1].numpy()
        errors = {name: float(np.linalg.norm(s.run(feeds)["hidden"] - want) / np.linalg.norm(want))
                  for name, s in sessions.items()}
        medians = _interleaved({name: (lambda s=s: s.run(feeds)) for name, s in sessions.items()}, rounds)
    for name, seconds in medians.items():
        print(f"int4 {name}: {1000 * seconds:.2f} ms per lm_step call, program {sizes[name] / 1e6:.0f} MB, "
              f"hidden-state error against fp32 {errors[name]:.3f} (relative L2)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="probe", required=True)
    h = sub.add_parser("heads", help="ExecuTorch depth_step: codebook heads as one linear or gathered")
    h.add_argument("--recipe", choices=("int8", "int4"), default="int8")
    h.add_argument("--rounds", type=int, default=7)
    e = sub.add_parser("elu", help="onnxruntime Elu against its vectorised rewrite")
    e.add_argument("--rounds", type=int, default=200)
    c = sub.add_parser("caches", help="a graph's KV caches written by the runtime or returned whole")
    c.add_argument("--graph", choices=("codec_decoder", "lm_step", "depth_step"), default="codec_decoder")
    c.add_argument("--recipe", choices=("int8", "int4", "fp32"), default="int8")
    c.add_argument("--calls", type=int, default=12)
    c.add_argument("--rounds", type=int, default=15)
    i = sub.add_parser("int4", help="ExecuTorch lm_step: int4 weights per group of 32 or per channel")
    i.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    if args.probe == "int4":
        int4(args.rounds)
    elif args.probe == "heads":
        heads(args.recipe, args.rounds)
    elif args.probe == "caches":
        caches(args.graph, args.recipe, args.calls, args.rounds)
    else:
        elu(args.rounds)


if __name__ == "__main__":
    main()
