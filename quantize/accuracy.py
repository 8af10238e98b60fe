"""What quantization cost: a quantized bundle measured against the fp32 bundle it came from.

For a voice (csm):
- LM (`lm_prefill` + `lm_step`, codebook-0 logits) and depth (`depth_step`, codebooks 1..K-1 logits):
  teacher-forced on the codes the fp32 bundle generated greedily, top-1 agreement and mean
  KL(fp32 || quantized) of the next-token distributions;
- greedy: the fraction of frames a greedy run of the quantized bundle reproduces exactly;
- codec: the same codes decoded by both `codec_decoder`s, SNR (dB) and log-mel distance (mean abs dB);
- size of each graph's files before and after, and per-frame milliseconds of both greedy runs.

For a codec bundle (mimi), on a fixed speech-like test signal streamed frame by frame:
- `codec_encoder`: the fraction of codes the quantized encoder reproduces (all codebooks, and codebook 0);
- `codec_decoder`: the fp32 codes decoded by both decoders, SNR and log-mel distance;
- sizes, and milliseconds per frame of each graph, fp32 and quantized.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

import edge.export  # noqa: F401  (registers the torch backend, which evaluate may run)
from edge.bundle import FILES_OF, Bundle, load_bundle
from edge.errors import EdgeError
from edge.runtime.codec import codec_codes, decode_stream
from edge.runtime.metrics import compare_audio
from edge.runtime.state import State

log = logging.getLogger(__name__)

TEXT = "Hello from edge."


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(-1)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class _Agreement:
    """Running top-1 agreement and KL(p || q) over pairs of logit rows."""

    def __init__(self) -> None:
        self.n, self.agree, self.kl = 0, 0, 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        lp, lq = _log_softmax(ref), _log_softmax(got)
        self.n += 1
        self.agree += int(np.argmax(lp) == np.argmax(lq))
        self.kl += float(np.sum(np.exp(lp) * (lp - lq)))

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"top1_agreement": self.agree / n, "mean_kl": self.kl / n, "positions": self.n}


def _teacher_forced(ref_voice, q_voice, tokens: list[int], codes: list[list[int]]) -> dict[str, Any]:
    m = ref_voice.model
    lm, depth = _Agreement(), _Agreement()
    padded = np.full((1, m["prompt_capacity"]), m["text_pad_token"], dtype=np.int64)
    padded[0, : len(tokens)] = tokens
    feeds = {"tokens": padded, "length": np.array([len(tokens)], np.int64)}
    outs = [v.sessions["lm_prefill"].run(feeds) for v in (ref_voice, q_voice)]
    graphs = ref_voice.bundle.graphs
    kvs = [State(graphs["lm_step"]["state"]) for _ in range(2)]
    states = [State(graphs["depth_step"]["state"]) for _ in range(2)]
    for kv, out in zip(kvs, outs, strict=True):
        kv.reset({"kv": out["kv"]})
    for f, frame in enumerate(codes):
        lm.add(outs[0]["logits"], outs[1]["logits"])
        for p in range(len(frame)):
            code = frame[0] if p == 0 else frame[p - 1]
            d = []
            for i, v in enumerate((ref_voice, q_voice)):
                r = v.sessions["depth_step"].run({"hidden": outs[i]["hidden"], "code": np.array([code], np.int64),
                                                  "position": np.array([p], np.int64), **states[i].feeds()})
                states[i].update(r)
                d.append(r["logits"])
            if p > 0:
                depth.add(d[0], d[1])
        if f + 1 < len(codes):
            step = {"codes": np.array([frame], np.int64), "position": np.array([len(tokens) + f], np.int64)}
            outs = [v.sessions["lm_step"].run({**step, **kvs[i].feeds()}) for i, v in enumerate((ref_voice, q_voice))]
            for kv, out in zip(kvs, outs, strict=True):
                kv.update(out)
    return {"lm": lm.result(), "depth": depth.result()}


def _codec(ref_voice, q_voice, codes: list[list[int]]) -> dict[str, float]:
    a, b = (decode_stream(v.sessions["codec_decoder"], v.bundle, np.array(codes, np.int64).T)[0]
            for v in (ref_voice, q_voice))
    return compare_audio(a, b, ref_voice.sample_rate)


def _greedy(voice, frames: int) -> tuple[list[list[int]], dict[str, float]]:
    from edge.runtime.sampler import SamplingConfig

    seconds = frames / voice.model["frame_rate"]
    best: dict[str, float] | None = None
    codes: list[list[int]] = []
    for _ in range(2):  # the second run is warm; keep the faster per-frame timings
        stream = voice.stream(TEXT, sampling=SamplingConfig(temperature=0), max_seconds=seconds)
        list(stream)
        codes, ms = stream.codes, stream.stats.per_frame_ms()
        ms["total"] = 1000 * stream.stats.total / max(stream.stats.frames, 1)
        best = ms if best is None else {k: min(v, best[k]) for k, v in ms.items()}
    return codes, best or {}


def _sizes(ref: Bundle, q: Bundle, backend: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name, g in q.graphs.items():
        if backend not in g["files"] or backend not in ref.graphs.get(name, {}).get("files", {}):
            continue
        before, after = ref.file_bytes(name, backend), q.file_bytes(name, backend)
        out[name] = {"recipe": g["recipe"], "bytes_before": before, "bytes_after": after,
                     "ratio": after / before if before else 1.0}
        if g.get("parameters"):  # bundles exported before the manifest recorded it have no count
            out[name]["parameters"] = g["parameters"]
            out[name]["bytes_per_parameter"] = after / g["parameters"]
    return out


def _evaluate_codec(ref: Bundle, q: Bundle, backend: str, frames: int) -> dict[str, Any]:
    from edge.runtime.sessions import open_sessions

    m = ref.model
    sr = m["sample_rate"]
    ref_s, q_s = open_sessions(ref, FILES_OF.get(backend, backend)), open_sessions(q, backend)
    result: dict[str, Any] = {"backend": backend, "recipes": {name: g["recipe"] for name, g in q.graphs.items()}}
    ms: dict[str, dict[str, float]] = {"fp32": {}, "quantized": {}}
    codes, enc_s = codec_codes(ref, ref_s.get("codec_encoder"), frames)
    if "codec_encoder" in ref.graphs:
        ms["fp32"]["codec_encoder"] = enc_s
        q_codes, ms["quantized"]["codec_encoder"] = codec_codes(q, q_s["codec_encoder"], frames)
        result["codec_encoder"] = {"code_agreement": float(np.mean(codes == q_codes)),
                                   "codebook0_agreement": float(np.mean(codes[0] == q_codes[0]))}
    if "codec_decoder" in ref.graphs:
        a, ms["fp32"]["codec_decoder"] = decode_stream(ref_s["codec_decoder"], ref, codes)
        b, ms["quantized"]["codec_decoder"] = decode_stream(q_s["codec_decoder"], q, codes)
        result["codec"] = compare_audio(a, b, sr)
    result["frames"] = int(codes.shape[-1])
    per_frame = 1000 / m["frames_per_call"]
    result["per_frame_ms"] = {k: {g: per_frame * v for g, v in d.items()} for k, d in ms.items()}
    return result


def _evaluate_voice(ref: Bundle, q: Bundle, backend: str, frames: int) -> dict[str, Any]:
    from edge.runtime.loop import Voice

    ref_voice, q_voice = Voice(ref, FILES_OF.get(backend, backend)), Voice(q, backend)
    ref_codes, ref_ms = _greedy(ref_voice, frames)
    q_codes, q_ms = _greedy(q_voice, frames)
    tokens = ref_voice.tokenizer.encode(TEXT, 0)
    same = sum(a == b for a, b in zip(ref_codes, q_codes, strict=False))
    return {
        "backend": backend,
        "frames": len(ref_codes),
        "recipes": {n: g["recipe"] for n, g in q.graphs.items()},
        **_teacher_forced(ref_voice, q_voice, tokens, ref_codes),
        "greedy_identical_frames": same / max(len(ref_codes), 1),
        "greedy_first_divergence": next((i for i, (a, b) in enumerate(zip(ref_codes, q_codes, strict=False))
                                         if a != b), min(len(ref_codes), len(q_codes))),
        "codec": _codec(ref_voice, q_voice, ref_codes),
        "per_frame_ms": {"fp32": ref_ms, "quantized": q_ms},
    }


def evaluate(bundle: str | Path, against: str | Path, backend: str = "onnx", frames: int = 20) -> dict[str, Any]:
    """Measure quantized `bundle` against its fp32 bundle `against`, both run with `backend` (with qnn, the fp32
    bundle runs its onnx graphs on the CPU: the HTP runs quantized graphs only)."""
    if frames < 1:
        raise EdgeError(f"--frames must be at least 1, got {frames}")
    q, ref = load_bundle(bundle), load_bundle(against)
    if (q.family, q.manifest["preset"], set(q.graphs)) != (ref.family, ref.manifest["preset"], set(ref.graphs)):
        raise EdgeError(f"{q.root} and {ref.root} are not bundles of the same model (preset and graphs differ)")
    if any(g["recipe"] != "fp32" for g in ref.graphs.values()):
        raise EdgeError(f"{ref.root} is itself quantized; compare against the fp32 bundle")
    t = time.perf_counter()
    run = _evaluate_voice if ref.family == "csm" else _evaluate_codec
    result = {**run(ref, q, backend, frames), "sizes": _sizes(ref, q, FILES_OF.get(backend, backend))}
    log.info("evaluated %s against %s (%s) in %.1f s", q.root, ref.root, backend, time.perf_counter() - t)
    return result
