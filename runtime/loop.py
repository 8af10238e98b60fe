"""The streaming decode loop, written once for every backend.

text → tokens → `lm_prefill` → per frame: sample codebook 0, `depth_step` × K for the other
codebooks, `codec_decoder` → PCM chunk yielded at once, `lm_step` to advance the backbone.
Everything the loop needs (capacities, codebooks, end-of-speech rule, sample rate) comes from
the bundle's manifest; the graphs come through `Session`s, so the loop never knows which
backend it drives. It times itself as it goes.

A text longer than one prompt is split into chunks (`edge.runtime.text`: sentences, then clauses, then
words) spoken in turn as one stream: each chunk gets its own prefill, but the codec decoder's state runs on
from chunk to chunk, so the audio at a seam is what decoding all the codes in one go would give; a short
pause (ramped in and out, so no step) separates sentences.
"""

from __future__ import annotations

import logging
import math
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
from edge.runtime.frames import frames_for
from edge.runtime.sampler import Sampler, SamplingConfig
from edge.runtime.sessions import Hook, Session, hooked, open_sessions
from edge.runtime.state import State, zero_state
from edge.runtime.text import Piece, chunk_text
from edge.runtime.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2_000_000  # a long book; past it, more likely a wrong file than a text
DEFAULT_PAUSE = 0.3  # seconds of silence between sentences of a long text
# Longest chunk, in characters, when the prompt would allow more. Voices trained on short sentences run away
# (never end) on long ones: the default voice (trained on 4-20 word sentences) on 2,000 words of the GPL-3 ran
# away on 22 of 163 chunks when only the prompt bounded them (about 1 in 4 of those over 80 characters), on 6 of
# 227 with this cap (benchmarks/long_text.py, BENCHMARKS.md).
DEFAULT_MAX_CHARS = 80
# A slow speaking rate, to size chunks: a chunk's prompt and the frames it will take must fit the KV cache.
SPEECH_CHARS_PER_SECOND = 12.0
_RAMP_SECONDS = 0.005  # a pause fades out of the audio before it and into the audio after it
# An hour per chunk: far beyond what a KV cache holds, and small enough that frame arithmetic stays exact.
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
        raise EdgeError("text is not UTF-8 (it holds undecodable bytes); give UTF-8 text") from None
    return text


def check_seconds(max_seconds: object) -> float:
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real) or not (
            0 < max_seconds <= MAX_SECONDS):
        raise EdgeError(f"--max-seconds must be a number in (0, {MAX_SECONDS:g}], got {max_seconds!r}")
    return float(max_seconds)


def check_pause(pause: object) -> float:
    if isinstance(pause, bool) or not isinstance(pause, numbers.Real) or not (0 <= pause <= 60):
        raise EdgeError(f"--pause must be between 0 and 60 seconds, got {pause!r}")
    return float(pause)


def check_voice(bundle: Bundle) -> None:
    """A bundle the loop can speak with: it declares a loop shape this edge runs, whose model facts match the
    graphs' shapes."""
    frames_for(bundle)


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
    stopped_by: str = ""  # "eos", else why the first chunk that did not end stopped: "max_seconds" or "kv_capacity"
    chunks: int = 0  # prompts spoken (a long text has several)

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
class TextChunk:
    """One chunk of a text as spoken: where its audio starts in the stream (after any pause before it), its
    frames and why it stopped: "eos", or a runaway that never ended by itself, cut at "max_seconds" or at
    "kv_capacity" (the KV cache was full first)."""

    index: int
    text: str
    tokens: int
    start: float = 0.0  # seconds from the start of the stream
    frames: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    pause_after: float = 0.0  # seconds of silence the stream puts after it (between sentences)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Stream:
    """An iterator of float32 PCM chunks; `codes`, `chunks` (one record per text chunk) and `stats` fill in as
    it runs."""

    _chunks: Iterator[np.ndarray]
    stats: Stats
    codes: list[list[int]] = field(default_factory=list)
    chunks: list[TextChunk] = field(default_factory=list)

    def runaways(self) -> list[TextChunk]:
        """The chunks that hit their frame limit without ending (their audio may stop mid-word)."""
        return [c for c in self.chunks if c.stopped_by not in ("", "eos")]

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
        self.frames = frames_for(bundle)  # the loop shape: what one frame is
        self.bundle, self.backend = bundle, backend
        self.model = bundle.model
        self.sample_rate: int = self.model["sample_rate"]
        self.tokenizer = load_tokenizer(bundle)
        # What stream() samples with when not told: the voice's recommendation, else SamplingConfig's defaults.
        self.sampling = SamplingConfig(**bundle.manifest.get("sampling", {})).validate()
        self.sessions = open_sessions(bundle, backend, list(self.frames.graphs), threads)
        self.hooks: list[Hook] = []
        # States are allocated once per voice and reused stream after stream, each stream holding its own.
        self._pools = {g: StatePool(bundle.graphs[g]) for g in (*self.frames.stateful, "codec_decoder")}

    @classmethod
    def load(cls, path: str | Path, backend: str = "onnx", threads: int | None = None) -> Voice:
        return cls(load_bundle(path), backend, threads)

    def _check(self, text: str, speaker: int, max_seconds: float, pause: float) -> None:
        check_text(text)
        speakers = self.model["speakers"]
        if isinstance(speaker, bool) or not isinstance(speaker, numbers.Integral) or not (0 <= speaker < speakers):
            raise EdgeError(f"unknown speaker {speaker!r}; this voice has speakers 0..{speakers - 1}")
        check_seconds(max_seconds)
        frame = 1 / self.model["frame_rate"]
        if max_seconds < frame:
            raise EdgeError(f"--max-seconds {max_seconds:g} is shorter than one frame of audio ({frame:g} s); give "
                            f"at least {frame:g}")
        check_pause(pause)

    def plan(self, text: str, speaker: int = 0, language: str = "en",
             max_chars: int | None = DEFAULT_MAX_CHARS) -> list[tuple[Piece, list[int]]]:
        """The chunks `stream` speaks `text` in, each with its prompt tokens: sentences, else clauses, else
        words (`edge.runtime.text`), each within the prompt capacity, and short enough that its prompt plus the
        frames it should take at a slow speaking rate fit the KV cache; and no longer than `max_chars` (None: as
        long as the prompt allows) unless a single word is longer."""
        if max_chars is not None and max_chars < 1:
            raise EdgeError(f"--max-chars must be >= 1, got {max_chars}")
        m = self.model
        cap, kv = m["prompt_capacity"], m["kv_capacity"]
        frames_per_char = m["frame_rate"] / SPEECH_CHARS_PER_SECOND
        encoded: dict[str, list[int]] = {}

        def tokens(t: str) -> list[int]:
            if t not in encoded:
                encoded[t] = self.tokenizer.encode(t, speaker)
            return encoded[t]

        def fits(t: str) -> bool:
            n = len(tokens(t))
            short = max_chars is None or len(t) <= max_chars or " " not in t  # one long word is one chunk
            return short and n <= cap and n + math.ceil(len(t) * frames_per_char) <= kv

        pieces = chunk_text(text, fits, language)
        if not pieces:
            raise EdgeError("text is empty; give the words to speak")
        return [(p, tokens(p.text)) for p in pieces]

    def stream(self, text: str, speaker: int = 0, sampling: SamplingConfig | None = None,
               max_seconds: float = 10.0, pause: float = DEFAULT_PAUSE, language: str = "en",
               max_chars: int | None = DEFAULT_MAX_CHARS) -> Stream:
        """Validate and chunk everything up front, then return a lazy stream of audio chunks.

        `text` may be any length: it is spoken chunk by chunk (`plan`) as one stream, `pause` seconds of
        silence between sentences; `max_chars` caps a chunk's length below what the prompt allows. `max_seconds`
        bounds each chunk; one that reaches it without ending is logged as a warning and listed by
        `Stream.runaways()`.

        Its clock (`stats.first_audio`, `stats.total`) counts this call's own work (validation, chunking,
        tokenizing) and the loop from the moment the first chunk is asked for, not the time in between.
        """
        t = time.perf_counter()
        self._check(text, speaker, max_seconds, pause)
        plan = self.plan(text, speaker, language, max_chars)
        sampler = Sampler(sampling or self.sampling)
        stats = Stats(backend=self.backend, prompt_tokens=sum(len(tokens) for _, tokens in plan), chunks=len(plan))
        stream = Stream(iter(()), stats)
        stream._chunks = self._run(plan, sampler, max_seconds, pause, stream, time.perf_counter() - t)
        return stream

    def synthesize(self, text: str, speaker: int = 0, sampling: SamplingConfig | None = None,
                   max_seconds: float = 10.0, pause: float = DEFAULT_PAUSE,
                   max_chars: int | None = DEFAULT_MAX_CHARS) -> tuple[np.ndarray, Stats]:
        stream = self.stream(text, speaker, sampling, max_seconds, pause, max_chars=max_chars)
        chunks = list(stream)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return audio, stream.stats

    def _run(self, plan: list[tuple[Piece, list[int]]], sample: Sampler, max_seconds: float, pause: float,
             stream: Stream, prepared: float) -> Iterator[np.ndarray]:
        states: dict[str, State] = {}  # taken from the pools as the stream starts each graph
        try:
            yield from self._chunks(plan, sample, max_seconds, pause, stream, prepared, states)
        finally:  # also when the caller stops early: the generator is closed
            for g, state in states.items():
                self._pools[g].give(state)

    def _chunks(self, plan: list[tuple[Piece, list[int]]], sample: Sampler, max_seconds: float, pause: float,
                stream: Stream, prepared: float, states: dict[str, State]) -> Iterator[np.ndarray]:
        """Speak the chunks in turn through one codec decoder state; between sentences, `pause` seconds that
        ramp from the last sample down to silence and from silence up to the next chunk's first sample (that
        last ramp is held back until the next chunk's first audio is out)."""
        m, stats, sr = self.model, stream.stats, self.sample_rate

        ended: dict[str, float] = {}  # when each Stats field's last call ended

        def watch(graph: str, feeds: dict[str, np.ndarray], seconds: float) -> None:
            field_name = self.frames.stats[graph]
            ended[field_name] = time.perf_counter()
            setattr(stats, field_name, getattr(stats, field_name) + seconds)
            for hook in self.hooks:
                hook(graph, feeds, seconds)

        s = hooked(self.sessions, watch)
        start = time.perf_counter() - prepared  # `stream()`'s own work counts too
        for g in self._pools:
            states[g] = self._pools[g].take()
        decode = FrameDecoder(m, self.bundle.graphs["codec_decoder"], s["codec_decoder"].run, states["codec_decoder"])
        pause_samples = round(pause * sr)
        ramp = min(round(_RAMP_SECONDS * sr), pause_samples // 2)
        out, last, hold = 0, 0.0, 0  # samples out so far; the last of them; pause samples held back

        for i, (piece, tokens) in enumerate(plan):
            record = TextChunk(i, piece.text, len(tokens), start=(out + hold) / sr)
            stream.chunks.append(record)
            for audio in self._frames(tokens, sample, max_seconds, stream, s, decode, states, record, start,
                                     ended):
                if hold:
                    audio = np.concatenate([(np.arange(hold, dtype=np.float32) / hold) * audio[0], audio])
                    stats.audio_seconds += hold / sr
                    hold = 0
                out, last = out + audio.size, float(audio[-1])
                yield audio
            record.seconds = record.frames * m["samples_per_frame"] / sr
            if record.stopped_by == "max_seconds":
                log.warning("chunk %d of %d hit its frame limit (%d frames, %.1f s) without ending, so its audio "
                            "may stop mid-word: %r; raise --max-seconds or shorten it", i + 1, len(plan),
                            record.frames, record.seconds, piece.text)
            elif record.stopped_by == "kv_capacity":
                log.warning("chunk %d of %d: audio cut at %.2f s without ending: the KV cache holds %d positions and "
                            "the prompt used %d; re-export with a larger --kv-capacity for longer audio, or lower "
                            "--max-chars: %r", i + 1, len(plan), record.seconds, m["kv_capacity"], len(tokens),
                            piece.text)
            if hold:  # the chunk gave no audio: the held-back part of the pause is plain silence
                yield self._silence(stats, hold)
                out, last, hold = out + hold, 0.0, 0
            if piece.sentence_end and i + 1 < len(plan) and pause_samples and out:
                body = np.zeros(pause_samples - ramp, np.float32)
                body[:ramp] = last * (np.arange(ramp, 0, -1, dtype=np.float32) - 1) / max(ramp, 1)
                stats.audio_seconds += body.size / sr
                out, last, hold = out + body.size, 0.0, ramp
                record.pause_after = pause_samples / sr
                yield body
        stats.stopped_by = next((c.stopped_by for c in stream.runaways()), "eos")
        stats.total = time.perf_counter() - start
        per_frame = ", ".join(f"{k} {v:.1f}" for k, v in stats.per_frame_ms().items())
        log.info("%s: %d chunks, %d frames, %.2f s audio, first audio %.0f ms, RTF %.3f; per frame (ms): %s",
                 self.backend, len(plan), stats.frames, stats.audio_seconds, 1000 * stats.first_audio, stats.rtf,
                 per_frame)

    def _silence(self, stats: Stats, n: int) -> np.ndarray:
        stats.audio_seconds += n / self.sample_rate
        return np.zeros(n, np.float32)

    def _frames(self, tokens: list[int], sample: Sampler, max_seconds: float, stream: Stream,
                s: dict[str, Session], decode: FrameDecoder, states: dict[str, State], record: TextChunk,
                start: float, ended: dict[str, float]) -> Iterator[np.ndarray]:
        """One chunk: the loop shape's frames (`self.frames.run`, through this stream's watched sessions `s`)
        until end of speech or the chunk's frame limit, decoded `frames_per_call` at a time."""
        m, stats = self.model, stream.stats
        fpc = m["frames_per_call"]
        wanted = int(max_seconds * m["frame_rate"])
        max_frames = self.frames.max_frames(tokens, wanted)
        frames = self.frames.run(tokens, sample, max_frames, s, states, stream.codes)
        prefilled: float | None = None
        pending: list = []
        while True:
            try:
                frame = next(frames)
            except StopIteration as end:
                record.stopped_by = end.value or ("kv_capacity" if max_frames < wanted else "max_seconds")
                break
            if prefilled is None:
                prefilled = ended.get("prefill", start)
            stats.frames += 1
            record.frames += 1
            pending.append(frame)
            if len(pending) == fpc:
                chunk = decode(pending)
                pending = []
                self._account(stats, chunk, start, prefilled)
                yield chunk
        if pending:  # with frames_per_call > 1, a chunk's last short group is decoded zero-padded
            chunk = decode(pending)
            self._account(stats, chunk, start, prefilled or start)
            yield chunk

    def _account(self, stats: Stats, chunk: np.ndarray, start: float, prefilled: float) -> None:
        if stats.audio_seconds == 0:
            now = time.perf_counter()
            stats.first_audio, stats.first_frame, stats.first_frames = now - start, now - prefilled, stats.frames
        stats.audio_seconds += chunk.size / self.sample_rate
        stats.total = time.perf_counter() - start
