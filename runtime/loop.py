"""The streaming decode loop, written once for every backend.

text → tokens → `lm_prefill` → per frame: sample codebook 0, `depth_step` × K for the other
codebooks, `codec_decoder` → PCM chunk yielded at once, `lm_step` to advance the backbone.
Everything the loop needs (capacities, codebooks, end-of-speech rule, sample rate) comes from
the bundle's manifest; the graphs come through `Session`s, so the loop never knows which
backend it drives. It times itself as it goes.
"""

from __future__ import annotations

import logging
import numbers
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import Bundle, load_bundle
from edge.errors import EdgeError
from edge.runtime.codec import FrameDecoder
from edge.runtime.sampler import Sampler, SamplingConfig
from edge.runtime.sessions import Hook, hooked, open_sessions
from edge.runtime.state import State, zero_state
from edge.runtime.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
# An hour per stream: far beyond what a KV cache holds, and small enough that frame arithmetic stays exact.
MAX_SECONDS = 3600.0


def check_text(text: object) -> str:
    """The text any voice can take: a non-empty str of valid Unicode, at most MAX_TEXT_CHARS long."""
    if not isinstance(text, str):
        raise EdgeError(f"text must be a str, got {type(text).__name__}" +
                        ("; decode the bytes first (text.decode('utf-8'))" if isinstance(text, bytes) else ""))
    if not text.strip():
        raise EdgeError("text is empty; give the words to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise EdgeError(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}, split it up")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8, smuggled in by the OS or a decoder
        raise EdgeError("text is not valid UTF-8 (it holds undecodable bytes); give UTF-8 text") from None
    return text


def check_seconds(max_seconds: object) -> float:
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real) or not (
            0 < max_seconds <= MAX_SECONDS):
        raise EdgeError(f"--max-seconds must be a number in (0, {MAX_SECONDS:g}], got {max_seconds!r}")
    return float(max_seconds)


def check_voice(bundle: Bundle) -> None:
    """The model facts the loop sizes its buffers by must match the graphs' shapes (a manifest edited by hand
    that passes the schema would otherwise fail mid-stream)."""
    if bundle.family != "csm":
        raise EdgeError(f"bundle {bundle.root} is a '{bundle.family}' codec bundle, not a voice; "
                        "export a TTS preset such as csm-tiny to speak")
    m, g = bundle.model, bundle.graphs
    tensors = {(name, t["name"]): t["shape"] for name, spec in g.items()
               for t in spec["inputs"] + spec["outputs"] + spec["state"]}
    expected = {
        ("lm_prefill", "tokens"): [1, m["prompt_capacity"]],
        ("lm_step", "codes"): [1, m["num_codebooks"]],
        ("codec_decoder", "codes"): [1, m["num_codebooks"], m["frames_per_call"]],
        ("codec_decoder", "audio"): [1, 1, m["frames_per_call"] * m["samples_per_frame"]],
    }
    for (name, tensor), shape in expected.items():
        if tensors.get((name, tensor)) != shape:
            raise EdgeError(f"bundle {bundle.root}: {name}'s {tensor} is {tensors.get((name, tensor))}, but the model "
                            f"section implies {shape}; the manifest was edited or is corrupt: re-export the bundle")
    kv = next((t for t in g["lm_step"]["state"] if t.get("write")), None)
    if kv is None or kv["shape"][kv["write"]["axis"]] != m["kv_capacity"] or m["kv_capacity"] <= m["prompt_capacity"]:
        raise EdgeError(f"bundle {bundle.root}: kv_capacity {m['kv_capacity']} does not match lm_step's cache (or "
                        "does not exceed prompt_capacity); the manifest was edited or is corrupt: re-export the bundle")


@dataclass
class Stats:
    """What the loop measured: seconds unless named otherwise."""

    backend: str = ""
    prompt_tokens: int = 0
    frames: int = 0
    audio_seconds: float = 0.0
    first_audio: float = 0.0  # from the call to the first PCM chunk (see `Voice.stream`)
    first_frame: float = 0.0  # from the end of the prefill to the first PCM chunk
    first_frames: int = 0  # frames generated when the first chunk came out (frames_per_call: nothing buffered)
    total: float = 0.0
    prefill: float = 0.0
    lm: float = 0.0  # lm_step calls
    depth: float = 0.0  # depth_step calls
    codec: float = 0.0  # codec_decoder calls
    stopped_by: str = ""  # "eos", "max_seconds", or "kv_capacity" (the cache was full before either)

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of compute per second of audio (below 1 is faster than real time)."""
        return self.total / self.audio_seconds if self.audio_seconds else float("inf")

    @property
    def host(self) -> float:
        """Time spent in Python between graph calls (sampling, bookkeeping)."""
        return max(0.0, self.total - self.prefill - self.lm - self.depth - self.codec)

    def per_frame_ms(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {k: 1000 * getattr(self, k) / n for k in ("lm", "depth", "codec", "host")}

    def to_json(self) -> dict:
        return {**asdict(self), "rtf": self.rtf, "host": self.host, "per_frame_ms": self.per_frame_ms()}


# The `Stats` field each graph's call time adds to.
STATS_FIELD = {"lm_prefill": "prefill", "lm_step": "lm", "depth_step": "depth", "codec_decoder": "codec"}


class StatePool:
    """The `State`s of one graph, kept for reuse: a stream takes one (reset to zeros or to `start`) and gives it
    back when it ends, so starting a stream allocates nothing and faults in no fresh pages (the real Mimi
    decoder's caches are 8 MB). Streams running side by side each get their own."""

    def __init__(self, spec: dict):
        self.specs, self.zeros = spec["state"], zero_state(spec["state"])
        self._free: list[State] = []
        self._lock = threading.Lock()

    def take(self, start: dict[str, np.ndarray] | None = None) -> State:
        with self._lock:
            state = self._free.pop() if self._free else None
        if state is None:
            state = State(self.specs, self.zeros)  # zeros already
            if start:
                state.reset(start)
            return state
        state.reset(start)
        return state

    def give(self, state: State) -> None:
        with self._lock:
            self._free.append(state)


@dataclass
class Stream:
    """An iterator of float32 PCM chunks; `codes` and `stats` fill in as it runs."""

    _chunks: Iterator[np.ndarray]
    stats: Stats
    codes: list[list[int]] = field(default_factory=list)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._chunks


class Voice:
    """A loaded bundle ready to speak: `stream()` yields audio chunks, `synthesize()` returns it whole.

    A Voice is safe to share between threads: every stream owns its buffers (prompt, KV caches, codec state,
    taken from per-voice pools), and the graph sessions it shares are safe to call concurrently (onnxruntime
    runs concurrent calls; an ExecuTorch method, which is not reentrant, is called under its own lock).

    `hooks` watch every graph call of every stream (`edge.runtime.sessions.Hook`: graph, feeds, seconds):
    calibration records the feeds, the profiler keeps each graph's last ones.
    """

    def __init__(self, bundle: Bundle, backend: str = "onnx", threads: int | None = None):
        check_voice(bundle)
        self.bundle, self.backend = bundle, backend
        self.model = bundle.model
        self.sample_rate: int = self.model["sample_rate"]
        self.tokenizer = load_tokenizer(bundle)
        # What stream() samples with when not told: the voice's recommendation, else SamplingConfig's defaults.
        self.sampling = SamplingConfig(**bundle.manifest.get("sampling", {})).validate()
        self.sessions = open_sessions(bundle, backend, ["lm_prefill", "lm_step", "depth_step", "codec_decoder"],
                                      threads)
        self.hooks: list[Hook] = []
        # States are allocated once per voice and reused stream after stream, each stream holding its own.
        self._pools = {g: StatePool(bundle.graphs[g]) for g in ("lm_step", "depth_step", "codec_decoder")}

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnx", threads: int | None = None) -> Voice:
        return cls(load_bundle(path), backend, threads)

    def _check(self, text: str, speaker: int, max_seconds: float) -> list[int]:
        check_text(text)
        speakers = self.model["speakers"]
        if isinstance(speaker, bool) or not isinstance(speaker, numbers.Integral) or not (0 <= speaker < speakers):
            raise EdgeError(f"unknown speaker {speaker!r}; this voice has speakers 0..{speakers - 1}")
        check_seconds(max_seconds)
        frame = 1 / self.model["frame_rate"]
        if max_seconds < frame:
            raise EdgeError(f"--max-seconds {max_seconds:g} is shorter than one frame of audio ({frame:g} s); give "
                            f"at least {frame:g}")
        tokens = self.tokenizer.encode(text, speaker)
        cap = self.model["prompt_capacity"]
        if len(tokens) > cap:
            raise EdgeError(
                f"text is {len(tokens)} tokens but this bundle's prompt holds at most {cap}; "
                "shorten the text, split it into sentences, or re-export with a larger --prompt-capacity"
            )
        return tokens

    def stream(self, text: str, speaker: int = 0, sampling: SamplingConfig | None = None,
               max_seconds: float = 10.0) -> Stream:
        """Validate everything up front, then return a lazy stream of audio chunks.

        Its clock (`stats.first_audio`, `stats.total`) counts this call's own work (validation, tokenizing)
        and the loop from the moment the first chunk is asked for, not the time in between.
        """
        t = time.perf_counter()
        tokens = self._check(text, speaker, max_seconds)
        sampler = Sampler(sampling or self.sampling)
        stats = Stats(backend=self.backend, prompt_tokens=len(tokens))
        stream = Stream(iter(()), stats)
        stream._chunks = self._run(tokens, sampler, max_seconds, stream, time.perf_counter() - t)
        return stream

    def synthesize(self, text: str, speaker: int = 0, sampling: SamplingConfig | None = None,
                   max_seconds: float = 10.0) -> tuple[np.ndarray, Stats]:
        stream = self.stream(text, speaker, sampling, max_seconds)
        chunks = list(stream)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return audio, stream.stats

    def _run(self, tokens: list[int], sample: Sampler, max_seconds: float, stream: Stream,
             prepared: float) -> Iterator[np.ndarray]:
        states: dict[str, State] = {}  # taken from the pools by `_frames` as it starts each graph
        try:
            yield from self._frames(tokens, sample, max_seconds, stream, prepared, states)
        finally:  # also when the caller stops early: the generator is closed
            for g, state in states.items():
                self._pools[g].give(state)

    def _frames(self, tokens: list[int], sample: Sampler, max_seconds: float, stream: Stream, prepared: float,
                states: dict[str, State]) -> Iterator[np.ndarray]:
        m, stats = self.model, stream.stats

        def watch(graph: str, feeds: dict[str, np.ndarray], seconds: float) -> None:
            field_name = STATS_FIELD[graph]
            setattr(stats, field_name, getattr(stats, field_name) + seconds)
            for hook in self.hooks:
                hook(graph, feeds, seconds)

        s = hooked(self.sessions, watch)
        start = time.perf_counter() - prepared  # `stream()`'s own work counts too
        k, cap, fpc = m["num_codebooks"], m["kv_capacity"], m["frames_per_call"]
        wanted = int(max_seconds * m["frame_rate"])
        max_frames = min(wanted, cap - len(tokens))
        capped = max_frames < wanted

        padded = np.full((1, m["prompt_capacity"]), m["text_pad_token"], dtype=np.int64)  # this stream's own
        padded[0, : len(tokens)] = tokens
        depth = states["depth_step"] = self._pools["depth_step"].take()
        states["codec_decoder"] = self._pools["codec_decoder"].take()
        out = s["lm_prefill"].run({"tokens": padded, "length": np.array([len(tokens)], np.int64)})
        kv = states["lm_step"] = self._pools["lm_step"].take({"kv": out["kv"]})  # the cache lm_prefill filled
        prefilled = time.perf_counter()
        eos = m["end_of_speech"]["eos_token"]
        eos_span = k - 1 if m["end_of_speech"]["eos_rule"] == "all_but_last_codebook" else k
        pending: list[list[int]] = []
        stats.stopped_by = "kv_capacity" if capped else "max_seconds"

        decode = FrameDecoder(m, self.bundle.graphs["codec_decoder"], s["codec_decoder"].run, states["codec_decoder"])

        for frame in range(max_frames):
            hidden = out["hidden"]
            codes = [sample(out["logits"])]
            # Each frame's depth positions start again at 0; slots past a position are masked, so the depth
            # cache needs no clearing between frames.
            for p in range(k):
                d = s["depth_step"].run({
                    "hidden": hidden, "code": np.array([codes[-1]], np.int64),
                    "position": np.array([p], np.int64), **depth.feeds(),
                })
                depth.update(d)
                if p > 0:
                    codes.append(sample(d["logits"]))
            stream.codes.append(codes)
            if all(c == eos for c in codes[:eos_span]):
                # As transformers' CSM: the stopping frame is audio unless *all* its codes are eos.
                if any(c != eos for c in codes):
                    stats.frames += 1
                    pending.append(codes)
                stats.stopped_by = "eos"
                break
            stats.frames += 1
            pending.append(codes)
            if len(pending) == fpc:
                chunk = decode(pending)
                pending = []
                self._account(stats, chunk, start, prefilled)
                yield chunk
            if frame + 1 < max_frames:
                out = s["lm_step"].run({
                    "codes": np.array([codes], np.int64), "position": np.array([len(tokens) + frame], np.int64),
                    **kv.feeds(),
                })
                kv.update(out)
        if pending:
            chunk = decode(pending)
            self._account(stats, chunk, start, prefilled)
            yield chunk
        stats.total = time.perf_counter() - start
        if stats.stopped_by == "kv_capacity":
            log.warning("audio cut at %.2f s: the KV cache holds %d positions and the prompt used %d; re-export "
                        "with a larger --kv-capacity for longer audio", stats.audio_seconds, cap, len(tokens))
        per_frame = ", ".join(f"{k} {v:.1f}" for k, v in stats.per_frame_ms().items())
        log.info("%s: %d frames, %.2f s audio, first audio %.0f ms, RTF %.3f; per frame (ms): %s", self.backend,
                 stats.frames, stats.audio_seconds, 1000 * stats.first_audio, stats.rtf, per_frame)

    def _account(self, stats: Stats, chunk: np.ndarray, start: float, prefilled: float) -> None:
        if stats.audio_seconds == 0:
            now = time.perf_counter()
            stats.first_audio, stats.first_frame, stats.first_frames = now - start, now - prefilled, stats.frames
        stats.audio_seconds += chunk.size / self.sample_rate
        stats.total = time.perf_counter() - start
