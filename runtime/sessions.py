"""Backend sessions: the one place edge opens a graph to run it, and the one way to watch its calls.

- `onnx_options`: the onnxruntime settings of every ONNX session edge opens (the voice's graphs, the
  profiler's per-op traces, the compute anchor), so whatever is measured runs as `speak` runs it. A session
  on another execution provider starts from the same options.
- `OnnxSession`, `ExecutorchSession`: one thin class per backend, all with the same `run(feeds) -> outputs`
  call. Arrays in and out are numpy; names follow the manifest (`edge.bundle.io_names`: inputs, then state;
  outputs, then each state's `<name>_next` or, for a written state, `<name>_new`). Only the ONNX session is
  importable without torch. The torch backend (the eager reference: the family adapter's own modules) is
  export's: `edge.export` registers it here (`register_backend`), so the runtime never imports export.
- `Hooked`: a session that times each call and hands it to a hook (the loop's stats, `Voice.hooks`,
  calibration's recorder, the codec drivers' timings).
- `cpu_count`, `graph_threads`: how many threads a session gets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.bundle import Bundle, io_names
from edge.errors import EdgeError

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


Hook = Callable[[str, dict[str, np.ndarray], float], None]
"""Called after each call of a watched session: the graph's name, the feeds it ran on, the call's seconds. The
feeds are the caller's own arrays (state is updated in place after the call): copy what you keep."""


class Hooked:
    """A session whose every call is timed and handed to `hook` (the hook's own time is not counted)."""

    def __init__(self, graph: str, session: Session, hook: Hook):
        self.graph, self.session, self.hook = graph, session, hook
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        out = self.session.run(feeds)
        self.hook(self.graph, feeds, time.perf_counter() - t)
        return out


def hooked(sessions: dict[str, Session], hook: Hook) -> dict[str, Session]:
    """Each of `sessions` watched by `hook`."""
    return {name: Hooked(name, s, hook) for name, s in sessions.items()}


def onnx_options(threads: int | None = None, profile: str | None = None) -> onnxruntime.SessionOptions:
    """The onnxruntime options of every ONNX session in edge: `threads` intra-op threads (onnxruntime's default
    if None), one inter-op thread, no spinning; with `profile`, a per-node trace written under that file prefix."""
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
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return opts


class OnnxSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import onnxruntime as ort

        self._sess = ort.InferenceSession(path, onnx_options(threads), providers=["CPUExecutionProvider"])
        self.input_names, self.output_names = io_names(spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs, strict=True))


class ExecutorchSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import torch
        from executorch.runtime import Runtime

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._method = Runtime.get().load_program(path).load_method("forward")
        self.input_names, self.output_names = io_names(spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        outs = self._method.execute(args)
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


Opener = Callable[[Bundle, list[str], int | None], dict[str, Session]]
"""Opens the named graphs of a bundle for one backend, with the given threads (None: the default)."""
_OPENERS: dict[str, Opener] = {}


def register_backend(backend: str, opener: Opener) -> None:
    """Let `open_sessions` open `backend` with `opener` (how `edge.export` adds the torch reference backend)."""
    _OPENERS[backend] = opener


def open_sessions(
    bundle: Bundle, backend: str, graphs: Sequence[str] | None = None, threads: int | None = None
) -> dict[str, Session]:
    """Open one session per graph of `bundle` for `backend` (`onnx`, `executorch`, or a registered one: `torch`)."""
    bundle.require_backend(backend)
    names = list(graphs) if graphs is not None else list(bundle.graphs)
    if backend in _OPENERS:
        return _OPENERS[backend](bundle, names, threads)
    if backend == "torch":
        raise EdgeError("the torch backend runs the model family's own PyTorch modules, which come with edge.export: "
                        "pip install 'edge-codec-tts[export]' and import edge.export (edge.api does)")
    cls = {"onnx": OnnxSession, "executorch": ExecutorchSession}[backend]
    try:
        return {n: cls(str(bundle.graph_file(n, backend)), bundle.graphs[n], graph_threads(bundle, n, backend, threads))
                for n in names}
    except ImportError as e:
        raise EdgeError(f"the {backend} backend needs '{e.name}', which is not installed: "
                        "pip install 'edge-codec-tts[export]'") from None
