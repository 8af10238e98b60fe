"""First-audio latency and real-time factor per backend against transformers' eager generate.

    python benchmarks/speak.py --preset csm-tiny --frames 40
    python benchmarks/speak.py --preset csm-1b --frames 8 --backends onnx,torch

Every backend and the eager reference run in one process on the same weights and the same
number of greedy frames, so the ratios are comparable even on a noisy machine. Results go to
stdout as a table and, with --json FILE, to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge.bundle import load_bundle
from edge.export.build import export_bundle
from edge.export.families import get_family
from edge.runtime.loop import Voice
from edge.runtime.sampler import SamplingConfig
from edge.runtime.tokenizers import load_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog."
log = logging.getLogger("bench")


def eager_generate(bundle, frames: int) -> dict:
    """transformers' CSM generate (greedy, fixed frames) + Mimi decode of the whole sequence."""
    model = get_family("csm").load_reference(bundle.path("reference"))
    ids = torch.tensor([load_tokenizer(bundle).encode(TEXT, 0)])
    with torch.inference_mode():
        model.generate(input_ids=ids, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=2)  # warm-up
        t = time.perf_counter()
        codes = model.generate(input_ids=ids, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames)
        k = bundle.model["codebook_size"]
        codes = torch.where(codes < k, codes, 0)
        audio = model.codec_model.decode(codes.transpose(1, 2)).audio_values
        total = time.perf_counter() - t
    seconds = audio.shape[-1] / bundle.model["sample_rate"]
    # generate is not streaming: its first audio comes with the last.
    return {"frames": int(codes.shape[1]), "first_audio": total, "total": total, "rtf": total / seconds}


def edge_run(bundle, backend: str, frames: int, repeats: int) -> dict:
    voice = Voice.load(bundle.root, backend)
    greedy = SamplingConfig(temperature=0)
    seconds = frames / bundle.model["frame_rate"]
    list(voice.stream(TEXT, sampling=greedy, max_seconds=2 / bundle.model["frame_rate"]))  # warm-up
    runs = []
    for _ in range(repeats):
        stream = voice.stream(TEXT, sampling=greedy, max_seconds=seconds)
        list(stream)
        runs.append(stream.stats)
    best = min(runs, key=lambda s: s.total)
    return {
        "frames": best.frames,
        "first_audio": statistics.median(s.first_audio for s in runs),
        "total": statistics.median(s.total for s in runs),
        "rtf": statistics.median(s.rtf for s in runs),
        "per_frame_ms": best.per_frame_ms(),
        "prefill_ms": 1000 * best.prefill,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="csm-tiny")
    ap.add_argument("--bundle", type=Path, help="use this bundle (with a torch reference) instead of exporting")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--backends", default="onnx,executorch,torch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    backends = args.backends.split(",")
    torch.manual_seed(0)
    np.random.seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle = load_bundle(args.bundle)
        else:
            t = time.perf_counter()
            exported = sorted({*backends, "torch"} - {"eager"})
            bundle = export_bundle(args.preset, Path(tmp) / "b", exported)
            log.info("export (%s): %.1f s", ",".join(exported), time.perf_counter() - t)
        results = {"eager_generate": eager_generate(bundle, args.frames)}
        for b in backends:
            results[b] = edge_run(bundle, b, args.frames, args.repeats)
    eager = results["eager_generate"]
    for r in results.values():
        r["speedup_vs_eager"] = eager["total"] / r["total"] * r["frames"] / eager["frames"]
    report = {
        "preset": bundle.manifest["preset"],
        "machine": f"{platform.machine()} {platform.processor() or ''} threads={torch.get_num_threads()}".strip(),
        "torch": torch.__version__,
        "frames": args.frames,
        "results": results,
    }
    print(f"{'backend':<16}{'frames':>7}{'first audio ms':>16}{'RTF':>8}{'x eager':>9}")
    for name, r in results.items():
        ms = 1000 * r["first_audio"]
        print(f"{name:<16}{r['frames']:>7}{ms:>16.1f}{r['rtf']:>8.3f}{r['speedup_vs_eager']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
