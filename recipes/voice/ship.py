"""Ship a trained voice: the LM checkpoint with the final codec inside, into the package as `edge-voice`.

    python -m recipes.voice.ship --lm runs/lm/last --codec runs/codec/last
    python -m recipes.voice.ship --lm runs/lm/best --codec edge/voices/edge-voice   # new LM, shipped codec

The LM learnt the codes of the codec's encoder and codebooks, which the codec's second phase freezes, so the
LM can train while the codec's decoder still does; shipping puts the latest codec in (and refuses one that
codes a fixed test signal differently from the LM's codec; a widened codec codes it the same). Writes
``edge/voices/edge-voice/``: ``config.json`` and ``model.safetensors`` (the Hugging Face checkpoint the
`edge-voice` preset exports, the codec's config inside) and ``training.json``
(what trained them: steps, minutes and settings of both runs, from their ``state.json``). The next
`edge speak` notices the new weights (their digest names the cached export) and re-exports. A later session
can go on training from the shipped weights with ``--init``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from edge.presets import CHECKPOINT_FILES
from recipes.voice.args import COUNT, WEIGHT
from recipes.voice.common import checkpoint_dir, load_codec, same_codes, setup

log = logging.getLogger("recipes.voice.ship")

VOICE_DIR = Path(__file__).resolve().parents[2] / "edge" / "voices" / "edge-voice"


def _run_record(ckpt: Path) -> dict:
    state = json.loads((ckpt / "state.json").read_text())
    return {"steps": state["step"], "minutes": round(state["seconds"] / 60, 1), "args": state["args"]}


def ship(lm: Path, codec: Path, out: Path = VOICE_DIR, temperature: float = 0.0, top_k: int = 50) -> Path:
    from transformers import CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(checkpoint_dir(lm), use_safetensors=True)
    final = load_codec(codec)
    if not same_codes(model.codec_model, final):
        raise SystemExit(f"{codec} codes audio differently from the codec {lm} was trained on; ship the codec "
                         "the LM's codes came from, or one tuned from it with --autoencoder-steps 0")
    model.codec_model, model.config.codec_config = final, final.config
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    # The sampling the voice recommends (edge speak's default for it), in Hugging Face's generation config.
    sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature,
                                                               "top_k": top_k}
    (tmp / "generation_config.json").write_text(json.dumps(sampling, indent=2) + "\n")
    runs = {}
    for role, ckpt in (("codec", codec), ("lm", lm)):
        if not (ckpt / "state.json").is_file() and (ckpt / "training.json").is_file():
            runs[role] = json.loads((ckpt / "training.json").read_text())[role]  # a shipped voice's part, kept
            continue
        runs[role] = _run_record(ckpt)
        init = runs[role]["args"].get("init")
        if init and (Path(init) / "training.json").is_file():  # trained on from a shipped voice: keep what trained it
            runs[role]["init_training"] = json.loads((Path(init) / "training.json").read_text()).get(role)
        elif init and (Path(init) / "state.json").is_file():  # trained on from another run's checkpoint
            runs[role]["init_training"] = _run_record(Path(init))
    (tmp / "training.json").write_text(json.dumps(runs, indent=2) + "\n")
    for extra in set(p.name for p in tmp.iterdir()) - {*CHECKPOINT_FILES, "training.json"}:
        (tmp / extra).unlink()  # the preset needs only the weights, config and sampling
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    log.info("shipped %s (%.1f MB): codec %d steps, lm %d steps", out, size, runs["codec"]["steps"],
             runs["lm"]["steps"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", type=Path, default=Path("runs/lm/last"))
    ap.add_argument("--codec", type=Path, default=Path("runs/codec/last"))
    ap.add_argument("--out", type=Path, default=VOICE_DIR)
    ap.add_argument("--temperature", type=WEIGHT, default=0.0,
                    help="sampling the voice recommends (0: greedy); pick it by benchmarks/quality.py --temperature")
    ap.add_argument("--top-k", type=COUNT, default=50, help="with --temperature > 0")
    args = ap.parse_args()
    setup(1)
    ship(args.lm, args.codec, args.out, args.temperature, args.top_k)


if __name__ == "__main__":
    main()
