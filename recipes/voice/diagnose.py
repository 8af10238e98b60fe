"""Which part of a voice's LM loses intelligibility: word error rates of teacher-forced decodes.

Every held-out sentence's teacher audio is encoded with the voice's codec, and the LM is run teacher-forced on
those codes: the backbone sees the true previous frames, so timing and content stay the teacher's. Each
variant replaces part of the true codes with the LM's greedy prediction, decodes them with the codec and
transcribes the audio with pocketsphinx (as `benchmarks/quality.py` does):

- ``teacher_codes``: the true codes (the codec's own floor);
- ``backbone``: codebook 0 from the backbone (one step ahead), codebooks 1..K-1 true;
- ``depth_decoder``: codebook 0 true, codebooks 1..K-1 from the depth decoder, greedily one after another;
- ``lm``: both predicted; free-running generation (``benchmarks/quality.py``'s ``wer``) adds the drift of
  the LM feeding itself.

It also reports each codebook's top-1 accuracy against the true codes.

    python -m recipes.voice.diagnose --lm edge/voices/edge-voice --data data/voice [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import CsmForConditionalGeneration

from recipes.voice.args import COUNT
from recipes.voice.common import load_audio, quality_module, setup
from recipes.voice.train_lm import backbone_states, depth_greedy, encode_all, text_prompts

log = logging.getLogger("recipes.voice.diagnose")


@torch.no_grad()
def diagnose(lm: Path, manifest: Path, limit: int | None = None) -> dict:
    quality = quality_module()
    recognize = quality.Recognizer()
    model = CsmForConditionalGeneration.from_pretrained(lm, use_safetensors=True).eval()
    codec, k = model.codec_model, model.config.num_codebooks
    utts, audio = load_audio(manifest)
    utts, audio = utts[:limit], audio[:limit]
    heard: dict[str, list[str]] = {v: [] for v in ("teacher_codes", "backbone", "depth_decoder", "lm")}
    hits, frames_seen = np.zeros(k), 0
    for i, (utt, clip) in enumerate(zip(utts, audio, strict=True)):
        codes = encode_all(codec, [clip], k)
        states, true = backbone_states(model, text_prompts([utt]), codes, [0])
        states, true = states[:-1], true[:-1]  # the end-of-speech frame is not audio
        first = model.lm_head(states).argmax(-1)
        depth = depth_greedy(model, states, true[:, 0])
        both = depth_greedy(model, states, first)
        hits[0] += (first == true[:, 0]).sum().item()
        hits[1:] += (depth[:, 1:] == true[:, 1:]).sum(0).numpy()
        frames_seen += len(true)
        variants = {"teacher_codes": true, "backbone": torch.cat([first[:, None], true[:, 1:]], 1),
                    "depth_decoder": depth, "lm": both}
        for name, frames in variants.items():
            wave = codec.decode(frames.T[None]).audio_values[0, 0].numpy()
            heard[name].append(recognize(wave, codec.config.sampling_rate))
        log.info("%d/%d sentences", i + 1, len(utts))
    refs = [u["text"] for u in utts]
    return {"lm": str(lm), "sentences": len(utts), "teacher_forced_wer": {
        name: quality.wer(refs, hyps) for name, hyps in heard.items()},
        "top1_accuracy_per_codebook": (hits / frames_seen).round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", type=Path, default=Path("edge/voices/edge-voice"),
                    help="an LM checkpoint with its codec (train_lm's runs/lm/best, or a shipped voice)")
    ap.add_argument("--data", type=Path, default=Path("data/voice"), help="the data recipe's output directory")
    ap.add_argument("--limit", type=COUNT, help="only the first N held-out sentences")
    ap.add_argument("--threads", type=COUNT, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    setup(args.threads)
    result = diagnose(args.lm, args.data / "test.jsonl", args.limit)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result["teacher_forced_wer"].items():
            log.info("teacher-forced WER, %-14s %.3f", name, value)
        log.info("top-1 accuracy per codebook: %s", result["top1_accuracy_per_codebook"])


if __name__ == "__main__":
    main()
