"""Per-operator profiles of one graph: where a call's time goes, and how much work it does.

ONNX Runtime: a separate session, with the runtime's own options (`onnx_options`) and profiling on,
runs the graph a few times; its JSON trace has one event per node per call with the op type, duration
and the real input/output shapes. From those shapes we also count the work of a call (used by the
roofline):

- FLOPs: 2 x MACs for MatMul-like ops (MatMul, FusedMatMul, Gemm, MatMulNBits, MatMulInteger,
  DynamicQuantizeMatMul, ...) and convolutions (Conv, FusedConv, ConvInteger, QLinearConv,
  ConvTranspose); one operation per output element for every other op.
- Weight bytes: the initializer bytes each node reads (ORT's `parameter_size`), except that a
  Gather reads only the rows it returns (an embedding lookup does not stream the whole table).

ExecuTorch: the program is loaded with ETDump enabled, run a few times, and the dump is read back
with the devtools `Inspector`; native kernels and the ops inside delegates (XNNPACK) both show.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError
from edge.runtime.sessions import onnx_options

TOP = 8
_MATMUL = {"MatMul", "FusedMatMul", "MatMulNBits", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
           "QLinearMatMul", "MatMulBnb4", "MatMulFpQ4"}
_GEMM = {"Gemm", "QGemm"}
_CONV_WEIGHT_INPUT = {"Conv": 1, "FusedConv": 1, "NhwcFusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
_GATHER = {"Gather", "GatherElements", "GatherND", "GatherBlockQuantized"}
_OVERHEAD = "(runtime overhead outside ops)"


@dataclass
class OpProfile:
    """One graph's per-op profile, per call."""

    source: str  # "onnxruntime profiler" or "executorch etdump"
    calls: int
    total_ms: float  # per call, as the profiler saw it (profiling itself adds some)
    ops: list[dict] = field(default_factory=list)  # [{op, ms, share, count}], slowest first, TOP of them

    def to_json(self) -> dict:
        return {"source": self.source, "calls": self.calls, "total_ms": self.total_ms, "top_ops": self.ops}


def _shape(entry: dict) -> list[int]:
    return next(iter(entry.values()))


def _node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    out = math.prod(outputs[0]) if outputs else 0
    if op in _MATMUL and inputs:
        return 2.0 * out * inputs[0][-1]
    if op in _GEMM and inputs and outputs and outputs[0]:
        return 2.0 * out * (math.prod(inputs[0]) / outputs[0][0])
    if op in _CONV_WEIGHT_INPUT and len(inputs) > _CONV_WEIGHT_INPUT[op]:
        return 2.0 * out * math.prod(inputs[_CONV_WEIGHT_INPUT[op]][1:])
    if op == "ConvTranspose" and len(inputs) > 1:
        return 2.0 * math.prod(inputs[0]) * math.prod(inputs[1][1:])
    return float(out)


def _rank(times: dict[str, float], counts: dict[str, int], total: float) -> list[dict]:
    rows = [{"op": op, "ms": ms, "share": ms / total if total else 0.0, "count": counts[op]}
            for op, ms in times.items()]
    return sorted(rows, key=lambda r: -r["ms"])[:TOP]


def _ort_trace(path: Path, feeds: dict[str, np.ndarray], threads: int, calls: int, as_written: bool) -> list[dict]:
    """Run an ONNX graph `calls` times under onnxruntime's profiler and return its trace events.

    `as_written` turns off graph optimizations and weight prepacking, so every node of the file shows
    with every input shape (prepacked weights vanish from the trace otherwise): used to count work.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edge-ortprof-") as tmp:
        opts = onnx_options(threads, profile=str(Path(tmp) / "ort"))  # as the voice's own sessions run
        if as_written:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.add_session_config_entry("session.disable_prepacking", "1")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # An npu recipe's file takes int32 where the contract says int64, and a >5-axis tensor with its first two
        # axes merged (`edge.quantize.npu`): the same cast and view the runtime's sessions make.
        inputs = {i.name: (i.type == "tensor(int32)", len(i.shape)) for i in sess.get_inputs()}
        fed = {n: feeds[n].astype(np.int32) if int32 else feeds[n] for n, (int32, _) in inputs.items()}
        fed = {n: a.reshape(-1, *a.shape[2:]) if a.ndim == inputs[n][1] + 1 else a for n, a in fed.items()}
        for _ in range(calls):
            sess.run(None, fed)
        return json.loads(Path(sess.end_profiling()).read_text())


def _nodes(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def onnx_work(path: Path, feeds: dict[str, np.ndarray], threads: int) -> tuple[float, float]:
    """FLOPs and weight bytes read by one call of an ONNX graph, from its nodes' real shapes."""
    flops = weight_bytes = 0.0
    for e in _nodes(_ort_trace(path, feeds, threads, 1, as_written=True)):
        args = e["args"]
        op = args["op_name"]
        inputs = [_shape(t) for t in args.get("input_type_shape", [])]
        outputs = [_shape(t) for t in args.get("output_type_shape", [])]
        flops += _node_flops(op, inputs, outputs)
        params = float(args.get("parameter_size", 0))
        weight_bytes += min(params, float(args.get("output_size", 0))) if op in _GATHER else params
    return flops, weight_bytes


def onnx_op_profile(path: Path, feeds: dict[str, np.ndarray], threads: int, calls: int) -> OpProfile:
    """Profile `calls` runs of an ONNX graph (optimized as the runtime runs it) with onnxruntime's profiler.

    One extra first run warms the session up and is left out.
    """
    events = _ort_trace(path, feeds, threads, calls + 1, as_written=False)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[1:]
    start = runs[0]["ts"] if runs else 0
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in _nodes(events):
        if e["ts"] >= start:
            op = e["args"]["op_name"]
            times[op] += e["dur"] / 1000 / calls
            counts[op] += 1
    counts = {op: n // calls for op, n in counts.items()}
    total = sum(e["dur"] for e in runs) / 1000 / calls
    times[_OVERHEAD], counts[_OVERHEAD] = max(0.0, total - sum(times.values())), 0
    return OpProfile("onnxruntime profiler", calls, total, _rank(times, counts, total))


def executorch_op_profile(path: Path, args: list[np.ndarray], calls: int) -> OpProfile:
    """Profile `calls` runs of a .pte program through ETDump, read back with the devtools Inspector.

    One extra first run warms the method up and is left out.
    """
    try:
        import torch
        from executorch.devtools import Inspector
        from executorch.runtime import Runtime
    except ImportError as e:
        raise EdgeError(f"profiling ExecuTorch needs '{e.name}': pip install 'edge-codec-tts[export]'") from None
    program = Runtime.get().load_program(str(path), enable_etdump=True)
    method = program.load_method("forward")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    for _ in range(calls + 1):
        method.execute(tensors)
    with tempfile.TemporaryDirectory(prefix="edge-etdump-") as tmp:
        dump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(dump), str(Path(tmp) / "debug.bin"))
        if not dump.is_file():
            raise EdgeError("this ExecuTorch runtime wrote no ETDump (it was built without the event tracer); "
                            "profile with --backend onnx for a per-op breakdown")
        inspector = Inspector(etdump_path=str(dump))
    times: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    total = 0.0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None:
                continue
            ms = float(np.mean(event.perf_data.raw[1:] or event.perf_data.raw))
            if event.name == "Method::execute":
                total += ms
            elif event.name not in ("OPERATOR_CALL", "DELEGATE_CALL"):
                name = re.sub(r" #\d+$", "", event.name).removeprefix("native_call_")
                if event.is_delegated_op:
                    name = f"{event.delegate_backend_name or 'delegate'}: {name}"
                times[name] += ms
                counts[name] += 1
    times[_OVERHEAD], counts[_OVERHEAD] = max(0.0, total - sum(times.values())), 0
    return OpProfile("executorch etdump", calls, total, _rank(times, counts, total))
