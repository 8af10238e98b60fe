"""`edge profile`: measure a voice bundle on this machine, per graph and per frame, and project it onto devices.

For each backend the bundle is loaded as a `Voice` and speaks a short sentence through the one
streaming loop (after a short warm-up utterance); its `Stats` give time to first audio, real-time
factor and the per-frame split (lm, depth, codec, host). The loop's sessions are wrapped so the
last real inputs of each graph are kept; each graph is then timed alone on those inputs (median
and p90 over repeated calls after warm-up), profiled per operator, and its work counted for the
roofline (`roofline.py`), which is calibrated on each graph's time per call inside the loop.
Peak resident memory is the process high-water mark, reset per backend.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.bundle import Bundle, load_bundle
from edge.devices import roofline
from edge.devices.bandwidth import machine_bandwidth
from edge.devices.catalogue import Device
from edge.devices.compute import machine_compute
from edge.devices.opprofile import executorch_op_profile, onnx_op_profile, onnx_work
from edge.errors import EdgeError
from edge.runtime.loop import Voice
from edge.runtime.sampler import SamplingConfig
from edge.runtime.sessions import Session, check_threads, default_threads, graph_threads

log = logging.getLogger(__name__)

TEXT = "Hello from edge, on this device."
GRAPHS = ("lm_prefill", "lm_step", "depth_step", "codec_decoder")
WARMUP_CALLS = 3
PROFILE_CALLS = 5


def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux: VmHWM via clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: no high-water mark from the standard library
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _tensor_bytes(specs: list[dict]) -> int:
    return sum(math.prod(t["shape"]) * np.dtype(t["dtype"]).itemsize for t in specs)


def state_traffic(spec: dict) -> int:
    """Bytes of state one call of graph `spec` moves: each state read once, then written whole if carried, or
    only its new entries if written (`edge.runtime.state`)."""
    shapes = {t["name"]: t["shape"] for t in spec["outputs"]}
    total = 0
    for t in spec["state"]:
        whole, write = _tensor_bytes([t]), t.get("write")
        total += whole + (whole if write is None else
                          whole // t["shape"][write["axis"]] * math.prod(shapes[write["index"]]))
    return total


def parameter_bytes(bundle: Bundle, graph: str, backend: str) -> tuple[int, str]:
    """Bytes of a graph's weights: its ONNX initializers, or (ExecuTorch) its file size."""
    if backend == "onnx":
        import onnx

        model = onnx.load(str(bundle.graph_file(graph, "onnx")), load_external_data=False)
        total = sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                    for t in model.graph.initializer)
        return total, "onnx initializers"
    return bundle.file_bytes(graph, backend), "file size (weights + a small program)"


def _time_calls(session: Session, feeds: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    for _ in range(WARMUP_CALLS):
        session.run(feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(feeds)
        times.append(1000 * (time.perf_counter() - t))
    return {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)), "min": float(min(times)),
            "calls": repeats}


def _profile_backend(bundle: Bundle, backend: str, threads: int | None, frames: int, repeats: int,
                     work: dict[str, tuple[float, float | None, str]], anchors: tuple[float, float],
                     step: Callable[[str], None]) -> dict[str, Any]:
    rss_scope = "this backend's load and run" if _reset_peak_rss() else "the whole process so far"
    step(f"{backend}: loading")
    voice = Voice(bundle, backend, threads)  # threads None: per graph, as `edge speak` runs them
    last: dict[str, dict[str, np.ndarray]] = {}  # each graph's last feeds: the loop's real inputs, to time alone
    voice.hooks.append(lambda graph, feeds, _seconds: last.__setitem__(graph, feeds))
    m = voice.model
    greedy = SamplingConfig(temperature=0)
    step(f"{backend}: warm-up utterance")
    list(voice.stream(TEXT, sampling=greedy, max_seconds=2 / m["frame_rate"]))
    step(f"{backend}: speaking {frames} frames")
    stream = voice.stream(TEXT, sampling=greedy, max_seconds=frames / m["frame_rate"])
    for _ in stream:
        pass
    stats = stream.stats
    calls_per_frame = {"lm_prefill": 0, "lm_step": 1, "depth_step": m["num_codebooks"],
                       "codec_decoder": 1 / m["frames_per_call"]}
    per_frame = stats.per_frame_ms()
    # What one call took inside the streaming loop (sessions interleaved, as a voice runs them).
    in_loop = {"lm_prefill": 1000 * stats.prefill, "lm_step": per_frame["lm"],
               "depth_step": per_frame["depth"] / m["num_codebooks"],
               "codec_decoder": per_frame["codec"] * m["frames_per_call"]}
    graphs = {}
    for name in GRAPHS:
        session, feeds, spec = voice.sessions[name], last[name], bundle.graphs[name]
        step(f"{backend}: timing {name}")
        latency = _time_calls(session, feeds, repeats)
        graph_threads_ = graph_threads(bundle, name, backend, threads)
        if name not in work:
            if "onnx" in bundle.backends():
                flops, weights = onnx_work(bundle.graph_file(name, "onnx"), feeds, graph_threads_)
                work[name] = (weights, flops, "onnx graph, real shapes (onnxruntime trace)")
            else:
                work[name] = (bundle.file_bytes(name, backend), None,
                              "file size only (no ONNX graph in the bundle): bandwidth term only")
        weights, flops, source = work[name]
        state = _tensor_bytes(spec["state"])
        nbytes = weights + state_traffic(spec)
        here = roofline.roofline_ms(nbytes, flops, *anchors)
        loop_ms = in_loop[name] or latency["median"]  # a run that stopped before its first frame has no loop time
        step(f"{backend}: profiling {name} per operator")
        if backend == "onnx":
            ops = onnx_op_profile(bundle.graph_file(name, "onnx"), feeds, graph_threads_, PROFILE_CALLS)
        else:
            args = [feeds[n] for n in session.input_names]
            ops = executorch_op_profile(bundle.graph_file(name, "executorch"), args, PROFILE_CALLS)
        params, params_source = parameter_bytes(bundle, name, backend)
        graphs[name] = {
            "recipe": spec["recipe"],
            "threads": graph_threads_,
            "file_bytes": bundle.file_bytes(name, backend),
            "parameter_bytes": params,
            "parameter_bytes_source": params_source,
            "state_bytes": state,
            "weight_bytes_per_call": weights,
            "bytes_per_call": nbytes,
            "flops_per_call": flops,
            "work_source": source,
            "latency_ms": latency,
            "calls_per_frame": calls_per_frame[name],
            "in_loop_ms_per_call": loop_ms,
            "roofline_here_ms": here,
            "efficiency": here / loop_ms,
            "op_profile": ops.to_json(),
        }
    state_bytes = sum(g["state_bytes"] for g in graphs.values() if g["calls_per_frame"])
    model_bytes = sum(g["file_bytes"] for g in graphs.values()) + state_bytes
    return {
        "backend": backend,
        "threads": threads or default_threads(),
        "graphs": graphs,
        "run": {
            "text": TEXT,
            "frames": stats.frames,
            "audio_seconds": stats.audio_seconds,
            "stopped_by": stats.stopped_by,
            "first_audio_ms": 1000 * stats.first_audio,
            "rtf": stats.rtf,
            "prefill_ms": 1000 * stats.prefill,
            "per_frame_ms": per_frame,
            "frame_budget_ms": 1000 / m["frame_rate"],
        },
        "peak_rss_bytes": _peak_rss_bytes(),
        "peak_rss_scope": rss_scope,
        "model_bytes": model_bytes,
    }


def profile(bundles: list[str | Path], devices: list[Device], backends: list[str] | None = None,
            threads: int | None = None, frames: int = 25, repeats: int = 20,
            on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Profile each bundle on this machine and project it onto `devices`; returns what `edge profile --json` prints.

    `backends`: which of each bundle's backends to run (default: onnx when it has it, else its first).
    """
    if frames <= 0:
        raise EdgeError(f"--frames must be positive, got {frames}")
    if repeats <= 0:
        raise EdgeError(f"--repeats must be positive, got {repeats}")
    check_threads(threads)
    step = on_step or (lambda _msg: None)
    loaded = [load_bundle(b) for b in bundles]
    plan = []
    for bundle in loaded:
        if bundle.family != "csm":
            raise EdgeError(f"bundle {bundle.root} is a '{bundle.family}' codec bundle; `edge profile` profiles a "
                            "voice (export a TTS preset such as csm-tiny)")
        chosen = backends or (["onnx"] if "onnx" in bundle.backends() else bundle.backends()[:1])
        for b in chosen:
            if b == "torch":
                raise EdgeError("edge profile measures the deployable backends (onnx, executorch); torch is the "
                                "eager reference, time it with `edge speak --backend torch --json`")
            if b in ("qnn", "coreml"):
                flag = " --qnn" if b == "qnn" else ""
                raise EdgeError(f"edge profile times CPU backends (onnx, executorch); {b} runs on an NPU this machine "
                                "has not (qnn here is an emulator, whose speed says nothing about a phone): see what "
                                f"it delegates with `edge inspect BUNDLE{flag}`")
            bundle.require_backend(b)
        if "onnx" in bundle.backends() and importlib.util.find_spec("onnx") is None:
            raise EdgeError("edge profile counts work on the bundle's ONNX graphs and needs the onnx package: "
                            "pip install 'edge-codec-tts[export]'")
        plan.append((bundle, chosen))
    machine_threads = threads or default_threads()
    step("measuring this machine (memory bandwidth, matmul throughput; cached after the first time)")
    bw, compute = machine_bandwidth(machine_threads), machine_compute(machine_threads)
    anchors = (bw.read_gbs, compute.gflops)
    results = []
    for bundle, chosen in plan:
        work: dict[str, tuple[float, float | None, str]] = {}
        per_backend = {}
        for backend in chosen:
            r = _profile_backend(bundle, backend, threads, frames, repeats, work, anchors,
                                 lambda msg, name=bundle.root.name: step(f"{name}: {msg}"))
            r["projections"] = {d.name: roofline.project(r["graphs"], bundle.model, r["model_bytes"], d, backend)
                                for d in devices}
            per_backend[backend] = r
        results.append({
            "bundle": str(bundle.root),
            "name": bundle.root.name,
            "preset": bundle.manifest["preset"],
            "recipes": {n: g["recipe"] for n, g in bundle.graphs.items()},
            "model": {k: bundle.model[k] for k in ("frame_rate", "num_codebooks", "frames_per_call", "sample_rate")},
            "backends": per_backend,
        })
    return {
        "edge_version": __version__,
        "machine": {"threads": machine_threads, "bandwidth": bw.to_json(), "compute": compute.to_json()},
        "estimate": {"label": roofline.LABEL, "assumptions": roofline.assumptions(*anchors, machine_threads)},
        "devices": {d.name: {"title": d.title, "memory_bandwidth_gbs": d.bandwidth_gbs,
                             "peak_fp32_gflops": round(d.peak_gflops, 1), "ram_gb": d.ram_gb, "npu": d.npu}
                    for d in devices},
        "bundles": results,
    }
