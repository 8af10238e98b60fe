"""Backend sessions: one thin class per backend, all with the same `run(feeds) -> outputs` call.

Arrays in and out are numpy; names follow the manifest (inputs, then state; outputs, then each
state's `<name>_next` or, for a written state, `<name>_new`: see `edge.runtime.state`). Only the ONNX
session is importable without torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edge.bundle import Bundle
from edge.errors import EdgeError
from edge.runtime.state import state_output

log = logging.getLogger(__name__)


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _names(spec: dict) -> tuple[list[str], list[str]]:
    inputs = [t["name"] for t in spec["inputs"]] + [t["name"] for t in spec["state"]]
    outputs = [t["name"] for t in spec["outputs"]] + [state_output(t) for t in spec["state"]]
    return inputs, outputs


class OnnxSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: on a machine running other work, spinning threads take the
        # cores the other threads of the same operator need (medium lm_step, 2 busy cores: 3 of 3 interleaved
        # runs faster without spinning, 61 -> 52, 178 -> 122, 195 -> 172 ms); with ops of a millisecond or
        # more (graphs on several threads, see SMALL_GRAPH_BYTES) the wake-up costs microseconds.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_names, self.output_names = _names(spec)
        self._edge = Boundary(self._sess, spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, self._edge.feeds(feeds, self.input_names))
        return self._edge.outputs(dict(zip(self.output_names, outs, strict=True)))


class Boundary:
    """Where an NPU graph's file differs from the graph contract at its edge (`edge.quantize.npu`): it carries
    the contract's int64 tensors as int32 and tensors of more than five axes with their first two merged.
    Feeds are cast and reshaped (a view) on the way in, outputs back on the way out, so the loop sees the
    manifest's contract whichever file it runs. A no-op for every other graph."""

    def __init__(self, sess, spec: dict) -> None:
        shapes = {t["name"]: t["shape"] for t in [*spec["inputs"], *spec["outputs"], *spec["state"]]}
        shapes |= {state_output(t): t["shape"] for t in spec["state"]}

        def adapt(values) -> dict[str, tuple[bool, tuple[int, ...] | None]]:
            out = {}
            for v in values:
                want = shapes.get(v.name)
                fold = want is not None and len(want) == len(v.shape) + 1
                if v.type == "tensor(int32)" or fold:
                    out[v.name] = (v.type == "tensor(int32)", (want[0], want[1]) if fold else None)
            return out

        self._in, self._out = adapt(sess.get_inputs()), adapt(sess.get_outputs())

    def feeds(self, feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        if not self._in:
            return {n: feeds[n] for n in names}
        out = {}
        for n in names:
            a = feeds[n]
            if n in self._in:
                int32, fold = self._in[n]
                a = a.astype(np.int32) if int32 else a
                a = a.reshape(-1, *a.shape[2:]) if fold else a
            out[n] = a
        return out

    def outputs(self, outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for n, (int32, fold) in self._out.items():
            a = outs[n].astype(np.int64) if int32 else outs[n]
            outs[n] = a.reshape(*fold, *a.shape[1:]) if fold else a
        return outs


QNN_EP = "QNNExecutionProvider"
_qnn_devices: list | None = None


def qnn_devices() -> list:
    """onnxruntime-qnn's plugin execution provider, registered with onnxruntime once per process: its devices
    (on x86 Linux, the HTP backend prepares the Hexagon graph and runs it in emulation)."""
    global _qnn_devices
    if _qnn_devices is None:
        import onnxruntime as ort

        try:
            import onnxruntime_qnn
        except ImportError:
            raise EdgeError("the qnn backend needs onnxruntime-qnn, which is not installed: "
                            "pip install 'edge-codec-tts[qnn]'") from None
        if not any(d.ep_name == QNN_EP for d in ort.get_ep_devices()):
            ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
        _qnn_devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]
        if not _qnn_devices:
            raise EdgeError("onnxruntime-qnn is installed but offers no device here; reinstall the qnn extra")
    return _qnn_devices


class QnnSession:
    """A quantized (QDQ) ONNX graph on onnxruntime's QNN execution provider, HTP backend, with CPU fallback
    disabled: the whole graph runs on the HTP, or the session fails to load with one line naming the nodes the
    HTP refused. Reads the bundle's onnx files (an npu recipe's; see `edge.quantize.npu`)."""

    def __init__(self, path: str, spec: dict, recipe: str, name: str = "", fallback: bool = False,
                 context: str | None = None):
        import onnxruntime as ort
        import onnxruntime_qnn

        from edge.quantize.recipes import NPU_RECIPES

        name = name or os.path.basename(path)
        if recipe not in NPU_RECIPES:
            raise EdgeError(f"graph {name} is {recipe}; the HTP runs quantized QDQ graphs: quantize the bundle "
                            "with `edge quantize BUNDLE --recipe npu-a16w8 --backend onnx --out NEW` (or npu-int8)")
        devices = qnn_devices()
        if context is not None:  # a precompiled EPContext model for this SoC: no Hexagon graph to prepare
            path = context

        def load(severity: int):
            opts = ort.SessionOptions()
            if not fallback:
                opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            opts.log_severity_level = severity
            opts.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                                    "offload_graph_io_quantization": "0"})
            return ort.InferenceSession(path, opts)

        try:
            with _loading(name):
                self._sess = load(3)
        except Exception as e:  # onnxruntime raises its own types; all mean "this graph does not load"
            # Load again, logging verbosely, to name what the HTP refused (the EP says so only at that level).
            with _loading(name) as log_text:
                with contextlib.suppress(Exception):  # it fails again; its log is what we want
                    load(0)
                raise EdgeError(_refusal(name, log_text(), str(e))) from None
        self.input_names, self.output_names = _names(spec)
        self._edge = Boundary(self._sess, spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, self._edge.feeds(feeds, self.input_names))
        return self._edge.outputs(dict(zip(self.output_names, outs, strict=True)))


@contextlib.contextmanager
def _loading(name: str):
    """While a QNN session loads, the EP logs what the HTP refused and QNN's libraries print to stdout: both
    file descriptors go to a temporary file (read back for the error, logged at debug level)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)

            def text() -> str:
                tmp.flush()
                tmp.seek(0)
                return tmp.read().decode(errors="replace")

            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if log.isEnabledFor(logging.DEBUG):
                tmp.seek(0)
                log.debug("qnn %s load log:\n%s", name, tmp.read().decode(errors="replace").strip())


def qnn_coverage(path: str, name: str = "") -> dict:
    """What of one onnx graph the HTP takes, loaded with CPU fallback allowed: its operators (Q/DQ excluded),
    those the QNN EP refused (left to the CPU) and the fraction on the HTP."""
    import onnx
    import onnxruntime as ort
    import onnxruntime_qnn

    devices = qnn_devices()
    opts = ort.SessionOptions()
    opts.log_severity_level = 0  # the EP names what it refuses at the verbose level only
    opts.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                            "offload_graph_io_quantization": "0"})
    error = ""
    with _loading(name or os.path.basename(path)) as log_text:
        try:
            ort.InferenceSession(path, opts)
        except Exception as e:  # a graph the HTP cannot finalize: every node counts as refused
            error = str(e).strip().splitlines()[0]
        text = log_text()
    ops = [n for n in onnx.load(path, load_external_data=False).graph.node
           if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    refused = {n for n, t in _refused(text) if t not in ("QuantizeLinear", "DequantizeLinear")}
    if error:
        refused = {n.name for n in ops}
    on = sum(1 for n in ops if n.name not in refused)
    return {"ops": len(ops), "on_htp": on, "fraction": on / len(ops) if ops else 1.0,
            "refused": sorted(refused)[:20], **({"error": error} if error else {})}


_UNSUPPORTED = re.compile(r"\{ name: ([^,]+), type: ([^ }]+) \}")
_FAILED = re.compile(r"failed for node `([^`]+)` of type `([^`]+)`")
_INVALID = re.compile(r"Operator type: (\S+) Node name: (\S+)")


def _refused(log_text: str) -> list[tuple[str, str]]:
    """(node, op type) of each node the QNN EP's log says the HTP refused."""
    refused = _UNSUPPORTED.findall(log_text) + _FAILED.findall(log_text)
    for block in log_text.split("Validation FAILED")[1:]:
        refused += [(n, t) for t, n in _INVALID.findall(block.split("\n\n")[0].split(" [V:")[0])]
    return refused


def _refusal(name: str, log_text: str, error: str) -> str:
    """One line: the nodes the HTP refused (from the EP's verbose log), else onnxruntime's own first line."""
    refused = _refused(log_text)
    ops = [(n, t) for n, t in refused if t not in ("QuantizeLinear", "DequantizeLinear")] or refused
    found = dict.fromkeys(f"{n} ({t})" for n, t in ops)
    if found:
        listed = ", ".join(list(found)[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        return f"the HTP refused {len(found)} node(s) of graph {name}: {listed}; CPU fallback is disabled"
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return f"graph {name} does not load on the HTP: {first}"


class ExecutorchSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import torch
        from executorch.runtime import Runtime

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._method = Runtime.get().load_program(path).load_method("forward")
        self.input_names, self.output_names = _names(spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        outs = self._method.execute(args)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}


class TorchSession:
    """The eager reference: the family adapter's graph module run by PyTorch itself."""

    def __init__(self, module, spec: dict, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._module = module
        self.input_names, self.output_names = _names(spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with self._torch.inference_mode():
            outs = self._module(*args)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}


def cpu_count() -> int:
    """The cores this process may run on: its affinity mask where the OS has one (Linux), else every core the
    OS reports (macOS, Windows). Every thread default and bound in edge comes from here."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: affinity-aware on every OS
        return max(1, os.process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    return cpu_count()


# An ONNX graph whose weights are smaller than this runs on one thread by default: its operators are so
# short that the cross-thread hand-off of each one costs more than it saves, and a busy machine makes that
# worse (an operator waits for a descheduled worker). Measured on csm-tiny (all graphs under 1 MB), 2 busy
# cores: real-time factor 0.148 on one thread against 0.313 on two (BENCHMARKS.md, notes).
SMALL_GRAPH_BYTES = 8 * 2**20


def graph_threads(bundle: Bundle, graph: str, backend: str, threads: int | None) -> int:
    """Intra-op threads for one graph: `threads` if given, else all cores (one for a small ONNX graph)."""
    if threads:
        return threads
    if backend == "onnx" and bundle.file_bytes(graph, backend) < SMALL_GRAPH_BYTES:
        return 1
    return default_threads()


def _qnn_contexts(bundle: Bundle, names: Sequence[str]) -> dict[str, str]:
    """The precompiled QNN context of each graph for the SoC named by EDGE_QNN_SOC (none if unset)."""
    soc = os.environ.get("EDGE_QNN_SOC", "").strip()
    if not soc:
        return {}
    from edge.quantize.qnn_context import check_soc

    soc = check_soc(soc)
    missing = [n for n in names if soc not in bundle.graphs[n].get("qnn_context", {})]
    if missing:
        raise EdgeError(f"bundle {bundle.root} has no QNN context for {soc} ({', '.join(missing)}); quantize it "
                        f"with --qnn-soc {soc}, or unset EDGE_QNN_SOC to compile at load")
    return {n: str(bundle.path(bundle.graphs[n]["qnn_context"][soc][0])) for n in names}


def open_sessions(
    bundle: Bundle, backend: str, graphs: Sequence[str] | None = None, threads: int | None = None
) -> dict[str, Session]:
    """Open one session per graph of `bundle` for `backend` (`onnx`, `qnn`, `executorch` or `torch`)."""
    if backend == "coreml" and sys.platform != "darwin":
        raise EdgeError(f"the coreml backend runs on Apple hardware only (iPhone or iPad with iOS 17+, Mac with "
                        f"macOS 14+); this is {sys.platform}: speak with --backend onnx or executorch here")
    bundle.require_backend(backend)
    names = list(graphs) if graphs is not None else list(bundle.graphs)
    if backend == "torch":
        try:
            from edge.export.families import reference_graphs
        except ImportError as e:
            raise EdgeError(f"the torch backend needs the export extra ({e.name} missing): "
                            "pip install 'edge-codec-tts[export]'") from None
        graphs = reference_graphs(bundle)
        return {n: TorchSession(graphs[n].module, bundle.graphs[n], threads or default_threads()) for n in names}
    if backend == "qnn":
        contexts = _qnn_contexts(bundle, names)
        return {n: QnnSession(str(bundle.graph_file(n, backend)), bundle.graphs[n], bundle.graphs[n]["recipe"], n,
                              context=contexts.get(n)) for n in names}
    cls = {"onnx": OnnxSession, "executorch": ExecutorchSession, "coreml": ExecutorchSession}[backend]
    try:
        return {n: cls(str(bundle.graph_file(n, backend)), bundle.graphs[n], graph_threads(bundle, n, backend, threads))
                for n in names}
    except ImportError as e:
        raise EdgeError(f"the {backend} backend needs '{e.name}', which is not installed: "
                        "pip install 'edge-codec-tts[export]'") from None
