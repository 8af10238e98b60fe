"""The codec graphs driven as a stream: frames of codes to audio (`FrameDecoder`, `decode_stream`) and audio to
codes (`encode_stream`), each call carrying the graph's state to the next. The voice's loop decodes through
`FrameDecoder`; quantization's accuracy, calibration and the benchmarks run whole signals through the others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.bundle import Bundle
from edge.runtime.metrics import test_signal
from edge.runtime.sessions import Hooked, Session
from edge.runtime.state import State


class FrameDecoder:
    """Frames of codes → PCM through `codec_decoder`, holding its state from call to call (`state`, or a fresh
    one)."""

    def __init__(self, model: dict, spec: dict, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 state: State | None = None):
        self.model, self.run = model, run
        self.state = state if state is not None else State(spec["state"])

    def __call__(self, frames: list[list[int]]) -> np.ndarray:
        """Decode up to `frames_per_call` frames (a short last group is zero-padded and trimmed)."""
        m, n = self.model, len(frames)
        codes = np.zeros((1, m["num_codebooks"], m["frames_per_call"]), np.int64)
        # The LM's audio vocabulary has a few ids past the codebook (pad and the like): a well-trained
        # model never emits them, a random one can; they decode as code 0 instead of crashing.
        frame_codes = np.array(frames, np.int64).T
        codes[0, :, :n] = np.where(frame_codes < m["codebook_size"], frame_codes, 0)
        out = self.run({"codes": codes, **self.state.feeds()})
        self.state.update(out)
        return out["audio"].reshape(-1)[: n * m["samples_per_frame"]].astype(np.float32)


def encode_stream(session: Session, spec: dict, audio: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Encode `audio` `n` samples at a time through `codec_encoder`: codes (K, frames), seconds per call."""
    state = State(spec["state"])
    codes, seconds = [], []
    timed = Hooked("codec_encoder", session, lambda _graph, _feeds, s: seconds.append(s))
    for i in range(0, audio.size - n + 1, n):
        out = timed.run({"audio": audio[i:i + n].reshape(1, 1, n), **state.feeds()})
        state.update(out)
        codes.append(out["codes"][0])
    return np.concatenate(codes, axis=-1), float(np.median(seconds))


def codec_codes(bundle: Bundle, encoder: Session | None, frames: int) -> tuple[np.ndarray, float]:
    """Codes (K, frames) to decode: the test signal through `encoder` (the bundle's `codec_encoder` session), or
    fixed random codes when there is none (a decoder-only bundle); with the encoder's seconds per call (0 if none)."""
    m = bundle.model
    if encoder is None:
        return np.random.default_rng(0).integers(0, m["codebook_size"], (m["num_codebooks"], frames)), 0.0
    audio = test_signal(m["sample_rate"], frames * m["samples_per_frame"] / m["sample_rate"])
    return encode_stream(encoder, bundle.graphs["codec_encoder"], audio, m["samples_per_frame"] * m["frames_per_call"])


def decode_stream(session: Session, bundle: Bundle, codes: np.ndarray) -> tuple[np.ndarray, float]:
    """Decode codes (K, frames) through `codec_decoder`: audio, seconds per call."""
    seconds: list[float] = []
    timed = Hooked("codec_decoder", session, lambda _graph, _feeds, s: seconds.append(s))
    decode = FrameDecoder(bundle.model, bundle.graphs["codec_decoder"], timed.run)
    frames, fpc = codes.T.tolist(), bundle.model["frames_per_call"]
    audio = np.concatenate([decode(frames[i:i + fpc]) for i in range(0, len(frames), fpc)])
    return audio.astype(np.float64), float(np.median(seconds))
