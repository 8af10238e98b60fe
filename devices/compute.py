"""This machine's measured FP32 matmul throughput: the compute anchor of the roofline.

The same engine, options (`onnx_options`) and thread count as the runtime: onnxruntime runs one large MatMul (N x N x N,
2 N^3 FLOPs) on the CPU execution provider; the best of a few calls gives sustained GFLOP/s.
Measured once per machine and thread count, cached next to the bandwidth measurement.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edge.devices.cache import machine_id, machine_measurement
from edge.errors import EdgeError
from edge.runtime.sessions import cpu_count, onnx_options

SIZE = 1024
REPEATS = 5
CACHE_NAME = "compute.json"


@dataclass(frozen=True)
class Compute:
    gflops: float  # sustained FP32 GFLOP/s of one large onnxruntime MatMul
    threads: int
    size: int
    machine: str
    measured_at: str

    def to_json(self) -> dict:
        return asdict(self)


def _matmul_model(n: int) -> bytes:
    try:
        from onnx import TensorProto, helper
    except ImportError as e:
        raise EdgeError(f"measuring compute needs the onnx package ({e.name} missing): "
                        "pip install 'edge-codec-tts[export]'") from None
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def measure_compute(threads: int | None = None, size: int = SIZE) -> Compute:
    import onnxruntime as ort

    threads = threads or cpu_count()
    sess = ort.InferenceSession(_matmul_model(size), onnx_options(threads), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}
    sess.run(None, feeds)  # warm-up: packing, thread pool start
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t)
    return Compute(round(2 * size**3 / best / 1e9, 2), threads, size, machine_id(), time.strftime("%Y-%m-%dT%H:%M:%S"))


def machine_compute(threads: int | None = None, refresh: bool = False) -> Compute:
    """This machine's FP32 matmul throughput, measured once and cached (keyed by machine and thread count)."""
    # Keyed by the session options too: a value cached before the runtime's options (no spinning) is measured again.
    return Compute(**machine_measurement(CACHE_NAME, "matmul throughput", threads or cpu_count(),
                                         lambda t: measure_compute(t).to_json(), refresh, how="onnx_options"))
