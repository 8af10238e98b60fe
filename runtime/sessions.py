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

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.bundle import Bundle, io_names, state_output
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


def _corrupt(path: str, what: str) -> EdgeError:
    return EdgeError(f"graph file {Path(path).name} ({Path(path).parent}) {what}; the bundle is corrupt or was "
                     "edited by hand: re-export it")


def check_io(path: str, spec: dict, inputs: Sequence[str] | int, outputs: Sequence[str] | int,
             shapes: Sequence[Sequence] | None = None) -> None:
    """The graph file's inputs and outputs (names, or counts where the format has no names; and the input
    shapes, in the manifest's order, where given) must be the ones the manifest declares, or the loop would
    fail mid-stream."""
    want_in, want_out = io_names(spec)
    for kind, want, got in (("inputs", want_in, inputs), ("outputs", want_out, outputs)):
        if isinstance(got, int):
            if got != len(want):
                raise _corrupt(path, f"has {got} {kind} but the manifest declares {len(want)}")
        elif set(got) != set(want):
            diff = sorted(set(want) ^ set(got))
            raise _corrupt(path, f"does not have the {kind} the manifest declares (differing: {', '.join(diff)})")
    want_shapes = [t["shape"] for t in [*spec["inputs"], *spec["state"]]]
    for name, want, got in zip(want_in, want_shapes, shapes or (), strict=False):
        dims = list(got)
        if len(dims) == len(want) - 1 and len(want) > 5:  # an NPU graph's edge merges the first two axes
            want = [want[0] * want[1], *want[2:]]
        if len(dims) != len(want) or any(isinstance(g, int) and g >= 0 and g != w for g, w in zip(dims, want,
                                                                                              strict=True)):
            raise _corrupt(path, f"takes {name} of shape {dims}, not the {want} the manifest declares")


@contextlib.contextmanager
def native_output(what: str, fds: Sequence[int] = (1, 2)) -> Iterator[Callable[[], str]]:
    """Catch what native code writes straight to file descriptors `fds` (ExecuTorch's cpuinfo probe, QNN's
    libraries and its EP's log) while the block runs: yields a function that reads it back, and logs it at debug
    level afterwards as `what`."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            saved = [os.dup(fd) for fd in fds]
        except OSError:  # no such descriptor to redirect
            yield lambda: ""
            return

        def text() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read().decode(errors="replace")

        for fd in fds:
            os.dup2(sink.fileno(), fd)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s, native output:\n%s", what, text().strip())


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


class OnnxSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import onnxruntime as ort

        try:
            self._sess = ort.InferenceSession(path, onnx_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's load errors (InvalidProtobuf, Fail, ...) derive from Exception only
            raise _corrupt(path, f"does not load in onnxruntime ({str(e).splitlines()[0][:200]})") from None
        ins = {i.name: i.shape for i in self._sess.get_inputs()}
        check_io(path, spec, list(ins), [o.name for o in self._sess.get_outputs()],
                 [ins.get(n, []) for n in io_names(spec)[0]])
        self.input_names, self.output_names = io_names(spec)
        self._edge = Boundary(self._sess, spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, self._edge.feeds(feeds, self.input_names))
        return self._edge.outputs(dict(zip(self.output_names, outs, strict=True)))


class ExecutorchSession:
    def __init__(self, path: str, spec: dict, threads: int | None = None):
        import torch
        from executorch.runtime import Runtime

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        try:
            with native_output(f"loading {Path(path).name}", fds=(2,)):
                self._method = Runtime.get().load_program(path).load_method("forward")
        except RuntimeError as e:
            raise _corrupt(path, f"does not load in ExecuTorch ({str(e).splitlines()[0][:200]})") from None
        meta = self._method.metadata
        check_io(path, spec, meta.num_inputs(), meta.num_outputs(),
                 [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())])
        self.input_names, self.output_names = io_names(spec)
        # A method owns its planned memory, so one call at a time: streams on several threads take turns here.
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with self._lock:
            outs = self._method.execute(args)
            return {n: o.numpy().copy() for n, o in zip(self.output_names, outs, strict=True)}


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


def check_threads(threads: int | None) -> int | None:
    """`--threads` is a count of this machine's cores: more only queues threads behind each other (and each
    costs a stack), so it is refused."""
    if threads is None:
        return None
    cores = cpu_count()
    if isinstance(threads, bool) or not isinstance(threads, int) or not (1 <= threads <= cores):
        raise EdgeError(f"--threads must be between 1 and this machine's {cores} cores, got {threads!r}")
    return threads


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
    """Open one session per graph of `bundle` for `backend` (`onnx`, `qnn`, `executorch`, `coreml`, or a
    registered one: `torch`)."""
    if backend == "coreml" and sys.platform != "darwin":
        raise EdgeError(f"the coreml backend runs on Apple hardware only (iPhone or iPad with iOS 17+, Mac with "
                        f"macOS 14+); this is {sys.platform}: speak with --backend onnx or executorch here")
    bundle.require_backend(backend)
    check_threads(threads)
    names = list(graphs) if graphs is not None else list(bundle.graphs)
    if backend in _OPENERS:
        return _OPENERS[backend](bundle, names, threads)
    if backend == "torch":
        raise EdgeError("the torch backend runs the model family's own PyTorch modules, which come with edge.export: "
                        "pip install 'edge-codec-tts[export]' and import edge.export (edge.api does)")
    cls = {"onnx": OnnxSession, "executorch": ExecutorchSession, "coreml": ExecutorchSession}[backend]
    try:
        return {n: cls(str(bundle.graph_file(n, backend)), bundle.graphs[n], graph_threads(bundle, n, backend, threads))
                for n in names}
    except ImportError as e:
        raise EdgeError(f"the {backend} backend needs '{e.name}', which is not installed: "
                        "pip install 'edge-codec-tts[export]'") from None


def check_graph_files(bundle: Bundle) -> None:
    """Every graph file of every backend parses and has the inputs and outputs the manifest declares (what
    `edge inspect` checks, so it fails wherever `speak` would). ONNX graphs are read without their weights when
    the onnx package is there, else loaded in onnxruntime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    for name, spec in bundle.graphs.items():
        for backend in spec["files"]:
            path = str(bundle.graph_file(name, backend))
            if backend == "onnx" and onnx is not None:
                try:
                    proto = onnx.load(path, load_external_data=False)
                except Exception as e:  # protobuf's DecodeError and friends
                    raise _corrupt(path, f"does not parse as ONNX ({type(e).__name__})") from None
                inits = {t.name for t in proto.graph.initializer}
                ins = {i.name: [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
                       for i in proto.graph.input if i.name not in inits}
                check_io(path, spec, list(ins), [o.name for o in proto.graph.output],
                         [ins.get(n, []) for n in io_names(spec)[0]])
            elif backend == "onnx":
                OnnxSession(path, spec, threads=1)
            elif backend == "executorch":
                try:
                    ExecutorchSession(path, spec, threads=None)
                except ImportError:
                    log.info("executorch is not installed; %s not checked", path)
