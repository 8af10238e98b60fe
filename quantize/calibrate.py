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


def collect(bundle: Bundle, texts: Sequence[str] = TEXTS, seconds: float = 1.6,
            per_graph: int = 48) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the fp32 ONNX graphs of `bundle` (a voice speaking `texts` with seeded sampling, or a codec on the
    test signal, `seconds` per text) and return up to `per_graph` recorded input feeds per graph, spread evenly
    over everything that ran."""
    store: dict[str, list[dict[str, np.ndarray]]] = {}

    def record(graph: str, feeds: dict[str, np.ndarray], _seconds: float) -> None:
        store[graph].append({n: np.array(a, copy=True) for n, a in feeds.items()})

    if bundle.family == "csm":
        from edge.runtime.loop import Voice
        from edge.runtime.sampler import SamplingConfig

        voice = Voice(bundle, "onnx")
        store.update({name: [] for name in voice.sessions})
        voice.hooks.append(record)
        for i, text in enumerate(texts):
            list(voice.stream(text, speaker=i % bundle.model.get("speakers", 1),
                              sampling=SamplingConfig(temperature=0.9, top_k=50, seed=i), max_seconds=seconds))
    else:
        from edge.runtime.codec import codec_codes, decode_stream
        from edge.runtime.sessions import hooked, open_sessions

        store.update({name: [] for name in bundle.graphs})
        sessions = hooked(open_sessions(bundle, "onnx"), record)
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
