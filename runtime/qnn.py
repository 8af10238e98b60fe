"""The `qnn` backend: a bundle's QDQ ONNX graphs on onnxruntime's QNN execution provider, HTP backend
(onnxruntime-qnn, the `qnn` extra; on x86 Linux its HTP backend prepares the Hexagon graph and runs it in
emulation). CPU fallback is disabled: a graph runs wholly on the HTP or fails to load with one line naming the
nodes the HTP refused. The graphs' edges follow the contract through `edge.runtime.sessions.Boundary`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from edge.bundle import NPU_RECIPES, Bundle, io_names
from edge.errors import EdgeError
from edge.runtime.sessions import Boundary, Session, native_output, onnx_options, register_backend

log = logging.getLogger(__name__)

# SoC -> QNN soc_model id (QNN SDK, QnnTypes.h): phones and the Snapdragon X laptop chip.
SOCS: dict[str, int] = {"SM8550": 43, "SM8650": 57, "SM8750": 69, "SM7550": 64, "SC8380XP": 60}


def check_soc(soc: str) -> str:
    name = soc.upper()
    if name not in SOCS:
        raise EdgeError(f"unknown Snapdragon SoC '{soc}'; known: {', '.join(SOCS)}")
    return name


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

        name = name or os.path.basename(path)
        if recipe not in NPU_RECIPES:
            raise EdgeError(f"graph {name} is {recipe}; the HTP runs quantized QDQ graphs: quantize the bundle "
                            "with `edge quantize BUNDLE --recipe npu-a16w8 --backend onnx --out NEW` (or npu-int8)")
        devices = qnn_devices()
        if context is not None:  # a precompiled EPContext model for this SoC: no Hexagon graph to prepare
            path = context

        def load(severity: int):
            opts = onnx_options()
            if not fallback:
                opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            opts.log_severity_level = severity
            opts.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                                    "offload_graph_io_quantization": "0"})
            return ort.InferenceSession(path, opts)

        try:
            with native_output(f"qnn {name} load"):
                self._sess = load(3)
        except Exception as e:  # onnxruntime raises its own types; all mean "this graph does not load"
            # Load again, logging verbosely, to name what the HTP refused (the EP says so only at that level).
            with native_output(f"qnn {name} load") as log_text:
                with contextlib.suppress(Exception):  # it fails again; its log is what we want
                    load(0)
                raise EdgeError(refusal(name, log_text(), str(e))) from None
        self.input_names, self.output_names = io_names(spec)
        self._edge = Boundary(self._sess, spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, self._edge.feeds(feeds, self.input_names))
        return self._edge.outputs(dict(zip(self.output_names, outs, strict=True)))


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
    with native_output(f"qnn {name or os.path.basename(path)} load") as log_text:
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


def refusal(name: str, log_text: str, error: str) -> str:
    """One line: the nodes the HTP refused (from the EP's verbose log), else onnxruntime's own first line."""
    refused = _refused(log_text)
    ops = [(n, t) for n, t in refused if t not in ("QuantizeLinear", "DequantizeLinear")] or refused
    found = dict.fromkeys(f"{n} ({t})" for n, t in ops)
    if found:
        listed = ", ".join(list(found)[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        return f"the HTP refused {len(found)} node(s) of graph {name}: {listed}; CPU fallback is disabled"
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return f"graph {name} does not load on the HTP: {first}"


def _contexts(bundle: Bundle, names: Sequence[str]) -> dict[str, str]:
    """The precompiled QNN context of each graph for the SoC named by EDGE_QNN_SOC (none if unset)."""
    soc = os.environ.get("EDGE_QNN_SOC", "").strip()
    if not soc:
        return {}
    soc = check_soc(soc)
    missing = [n for n in names if soc not in bundle.graphs[n].get("qnn_context", {})]
    if missing:
        raise EdgeError(f"bundle {bundle.root} has no QNN context for {soc} ({', '.join(missing)}); quantize it "
                        f"with --qnn-soc {soc}, or unset EDGE_QNN_SOC to compile at load")
    return {n: str(bundle.path(bundle.graphs[n]["qnn_context"][soc][0])) for n in names}


def qnn_sessions(bundle: Bundle, names: Sequence[str], threads: int | None = None) -> dict[str, Session]:
    """The named graphs of `bundle` on the HTP (from their precompiled contexts when EDGE_QNN_SOC names one);
    the HTP schedules its own work, so `threads` does not apply."""
    contexts = _contexts(bundle, names)
    return {n: QnnSession(str(bundle.graph_file(n, "qnn")), bundle.graphs[n], bundle.graphs[n]["recipe"], n,
                          context=contexts.get(n)) for n in names}


register_backend("qnn", qnn_sessions)
