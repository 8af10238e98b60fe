"""Calibration data: real graph inputs recorded while the fp32 bundle runs (for static npu-int8).

A voice is calibrated while it speaks a few texts; a codec bundle while it encodes and decodes a fixed
speech-like signal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from edge.bundle import Bundle

log = logging.getLogger(__name__)

TEXTS = ("Hello from edge.", "The quick brown fox jumps over the lazy dog.", "One, two, three, four?")


class _Recorder:
    """Wraps a session and keeps a copy of every feed it runs."""

    def __init__(self, session, store: list[dict[str, np.ndarray]]) -> None:
        self._session, self._store = session, store
        self.input_names, self.output_names = session.input_names, session.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._store.append({n: np.array(feeds[n], copy=True) for n in self.input_names})
        return self._session.run(feeds)


def collect(bundle: Bundle, texts: Sequence[str] = TEXTS, seconds: float = 1.6,
            per_graph: int = 48) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the fp32 ONNX graphs of `bundle` (a voice speaking `texts` with seeded sampling, or a codec on the
    test signal, `seconds` per text) and return up to `per_graph` recorded input feeds per graph, spread evenly
    over everything that ran."""
    if bundle.family == "csm":
        from edge.runtime.loop import Voice
        from edge.runtime.sampler import SamplingConfig

        voice = Voice(bundle, "onnx")
        store: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in voice.sessions}
        voice.sessions = {name: _Recorder(s, store[name]) for name, s in voice.sessions.items()}
        for i, text in enumerate(texts):
            list(voice.stream(text, speaker=i % bundle.model.get("speakers", 1),
                              sampling=SamplingConfig(temperature=0.9, top_k=50, seed=i), max_seconds=seconds))
    else:
        from edge.quantize.accuracy import codec_codes, decode_stream
        from edge.runtime.sessions import open_sessions

        store = {name: [] for name in bundle.graphs}
        sessions = {name: _Recorder(s, store[name]) for name, s in open_sessions(bundle, "onnx").items()}
        frames = int(seconds * len(texts) * bundle.model["frame_rate"])
        codes, _ = codec_codes(bundle, sessions.get("codec_encoder"), frames)
        if "codec_decoder" in sessions:
            decode_stream(sessions["codec_decoder"], bundle, codes)
    out = {}
    for name, feeds in store.items():
        keep = np.linspace(0, len(feeds) - 1, min(per_graph, len(feeds))).round().astype(int) if feeds else []
        out[name] = [feeds[i] for i in sorted(set(keep))]
        log.info("calibration: %d recorded calls of %s, %d kept", len(feeds), name, len(out[name]))
    return out
