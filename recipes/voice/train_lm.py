"""Train the voice's CSM-shaped LM on the trained codec's tokens, with byte-level text.

The model is transformers' `CsmForConditionalGeneration` (config `voice_csm()`): a backbone over frames
that predicts codebook 0 and a depth decoder that predicts codebooks 1..K-1 of each frame. Its
``codec_model`` is the codec from ``train_codec.py``, frozen; the training audio is encoded with it once
per codec, and the codes are kept beside the manifest (``codes-<key>.pt``). A training sequence is what
edge's runtime feeds the exported graphs: the prompt ``[bos] "[0]" + text [eos]`` (UTF-8 bytes,
`edge.runtime.tokenizers.ByteTokenizer`), then the frames of the utterance, then one
all-``codebook_eos_token_id`` frame that tells the loop to stop. Loss: the backbone's cross-entropy on
codebook 0 plus the depth decoder's on the rest (transformers' own).

    python -m recipes.voice.train_lm --data data/voice --codec runs/codec/last --out runs/lm --minutes 15

With ``--depth-only`` the backbone of ``--init`` stays frozen and only the depth decoder trains, on single frames
with the backbone state that predicts each (computed once, teacher-forced): a new depth decoder when
``--depth-hidden`` differs from the trained one's, else the trained one, deeper if ``--depth-layers`` asks.

The checkpoint (``runs/lm/last``) is a complete CSM checkpoint, codec included:
``edge export csm-tiny --checkpoint runs/lm/last --out voice`` exports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import CsmConfig, CsmForConditionalGeneration, MimiModel

from edge.export.families.mimi import samples_per_frame
from edge.presets import BYTE_VOCAB
from edge.runtime.tokenizers import ByteTokenizer
from recipes.voice.args import COUNT, FRACTION, NON_NEGATIVE
from recipes.voice.common import (
    TrainLog,
    batch_generator,
    checkpoint_dir,
    copy_checkpoint,
    load_audio,
    load_checkpoint,
    load_codec,
    read_manifest,
    save_run,
    set_learning_rate,
    setup,
    trainer_parser,
    voice_csm,
)

log = logging.getLogger("recipes.voice.train_lm")


def build_lm(codec: MimiModel, seed: int = 0, **sizes: int) -> CsmForConditionalGeneration:
    torch.manual_seed(seed)
    config = voice_csm(codec.config.to_dict(), **sizes)
    model = CsmForConditionalGeneration(CsmConfig(**config))
    model.codec_model.load_state_dict(codec.state_dict())
    model.codec_model.requires_grad_(False)
    return model


def init_from(model: CsmForConditionalGeneration, trained: CsmForConditionalGeneration,
              new_depth_decoder: bool = False) -> None:
    """Load a trained LM into `model`, which may be deeper (more backbone or depth-decoder layers) but not wider.

    Layers the trained LM lacks are appended after its own, with their attention and MLP output projections
    zeroed: each is then the identity on the residual stream, so the deeper model starts out computing exactly
    what the trained one does, and training grows the new layers from there. With `new_depth_decoder`, only
    the backbone (and the codebook embeddings it shares with the depth decoder) is loaded: the depth decoder,
    of any size, starts from its initialisation.
    """
    stacks = {"backbone": (model.config, trained.config)}
    if not new_depth_decoder:
        stacks["depth decoder"] = (model.config.depth_decoder_config, trained.config.depth_decoder_config)
    for stack, (ours, theirs) in stacks.items():
        for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(ours, field) != getattr(theirs, field):
                raise SystemExit(f"--init's {stack} has {field} {getattr(theirs, field)}, this run "
                                 f"{getattr(ours, field)}: an LM can only be made deeper, so keep its other sizes")
        if ours.num_hidden_layers < theirs.num_hidden_layers:
            raise SystemExit(f"--init's {stack} has {theirs.num_hidden_layers} layers, this run "
                             f"{ours.num_hidden_layers}: an LM can be made deeper, not shallower")
    modules = {"backbone": model.backbone_model, "depth decoder": model.depth_decoder.model}
    for stack, (_, theirs) in stacks.items():
        for layer in modules[stack].layers[theirs.num_hidden_layers:]:
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
            torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    shared = "depth_decoder.model.embed_tokens."  # tied to the backbone's codebook embeddings
    weights = {k: v for k, v in trained.state_dict().items() if not k.startswith("codec_model.") and not (
        new_depth_decoder and k.startswith("depth_decoder.") and not k.startswith(shared))}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(("codec_model.", "depth_decoder.")) or ".layers." in k
                                  for k in missing), missing


def cache_key(model: torch.nn.Module, manifest: Path, num_codebooks: int) -> str:
    """What codes computed for a manifest depend on: the model's weights and config, the manifest, the
    codebook count."""
    h = hashlib.sha256(manifest.read_bytes())
    # Not the config's dtype: a codec loaded on its own records one, the same codec inside a CSM does not.
    config = {k: v for k, v in model.config.to_dict().items() if k != "dtype"}
    h.update(f"{json.dumps(config, sort_keys=True, default=str)}{num_codebooks}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached(kind: str, model: torch.nn.Module, manifest: Path, num_codebooks: int,
           compute: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-utterance codes that `model` gives for `manifest`, computed once and kept beside the manifest
    (``<kind>-<key>.pt``), so a resumed run or a second run on the same model starts at once."""
    cache = manifest.parent / f"{kind}-{cache_key(model, manifest, num_codebooks)}.pt"
    if cache.is_file():
        codes = torch.load(cache)
        if len(codes) == len(read_manifest(manifest)):
            log.info("read the %s of %d utterances from %s", kind, len(codes), cache)
            return codes
    t = time.perf_counter()
    codes = compute()
    log.info("computed the %s of %d utterances (%d frames) in %.0f s", kind, len(codes),
             sum(len(c) for c in codes), time.perf_counter() - t)
    tmp = cache.with_suffix(".tmp")
    torch.save(codes, tmp)
    tmp.replace(cache)
    return codes


def load_codes(codec: MimiModel, manifest: Path, num_codebooks: int) -> tuple[list[dict], list[torch.Tensor]]:
    """The utterances of `manifest` and their codes, encoded once per codec (`cached`)."""
    codes = cached("codes", codec, manifest, num_codebooks,
                   lambda: encode_all(codec, load_audio(manifest)[1], num_codebooks))
    return read_manifest(manifest), codes


@torch.no_grad()
def encode_all(codec: MimiModel, audio: list, num_codebooks: int) -> list[torch.Tensor]:
    """Codes (frames, K) of every utterance, with the codec run over the whole utterance at once."""
    codec.eval()
    spf = samples_per_frame(codec.config)
    out = []
    for a in audio:
        x = torch.from_numpy(a)
        x = torch.nn.functional.pad(x, (0, -x.numel() % spf))[None, None]
        out.append(codec.encode(x, num_quantizers=num_codebooks).audio_codes[0].T.contiguous())
    return out


def text_prompts(utts: list[dict]) -> list[list[int]]:
    """Each utterance's prompt as edge's runtime feeds it: ``[bos] "[0]" + text [eos]`` in UTF-8 byte ids."""
    tok = ByteTokenizer(BYTE_VOCAB["bos"], BYTE_VOCAB["eos"])
    return [tok.encode(u["text"], 0) for u in utts]


def make_batch(model: CsmForConditionalGeneration, prompts: list[list[int]], codes: list[torch.Tensor],
               pick: list[int], audio_dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds (B, S, H) and labels (B, S, K) for utterances `pick`: prompt, frames, end-of-speech frame.

    `audio_dropout` drops entries of the frames' input embeddings (as Tacotron's pre-net dropout does): the
    previous frames alone then predict the next one less well, which pushes the model to read the text.
    """
    cfg = model.config
    k = cfg.num_codebooks
    eos = torch.full((1, k), cfg.codebook_eos_token_id, dtype=torch.long)
    seqs = [(torch.tensor(prompts[i]), torch.cat([codes[i], eos])) for i in pick]
    length = max(len(t) + len(f) for t, f in seqs)
    embeds = torch.zeros(len(pick), length, cfg.hidden_size)
    labels = torch.full((len(pick), length, k), -100, dtype=torch.long)
    for b, (text, frames) in enumerate(seqs):
        n = len(text)
        embeds[b, :n] = model.embed_text_tokens(text)
        frame_embeds = model.backbone_model.embed_tokens(frames[None])[0]
        embeds[b, n:n + len(frames)] = torch.nn.functional.dropout(frame_embeds, audio_dropout, audio_dropout > 0)
        labels[b, n:n + len(frames)] = frames
    return embeds, labels


def is_dev(text: str, every: int) -> bool:
    """One utterance in `every` (by a hash of its text, so growing the data never moves one across) is dev."""
    return every > 0 and int(hashlib.sha256(text.encode()).hexdigest(), 16) % every == 0


@contextmanager
def evaluating(model: CsmForConditionalGeneration) -> Iterator[None]:
    """Eval mode inside, the model's previous mode after (its frozen codec always in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        model.codec_model.eval()


@torch.no_grad()
def dev_loss(model: CsmForConditionalGeneration, prompts: list[list[int]], codes: list[torch.Tensor],
             dev: list[int], batch: int) -> dict[str, float]:
    """Teacher-forced losses on the dev utterances (eval mode; each batch weighted by its utterances)."""
    sums = {"dev_backbone": 0.0, "dev_depth": 0.0}
    with evaluating(model):
        for i in range(0, len(dev), batch):
            pick = dev[i:i + batch]
            embeds, labels = make_batch(model, prompts, codes, pick)
            out = model(inputs_embeds=embeds, labels=labels)
            sums["dev_backbone"] += out.backbone_loss.item() * len(pick)
            sums["dev_depth"] += out.depth_decoder_loss.item() * len(pick)
    return {k: v / len(dev) for k, v in sums.items()}


def best_dev(train_log: TrainLog) -> float:
    """The lowest summed dev loss a run has logged so far (inf if none): a resumed run keeps its best."""
    return min((sum(v for k, v in r.items() if k.startswith("dev_")) for r in train_log.records()
                if "dev_depth" in r), default=float("inf"))


@torch.no_grad()
def backbone_states(model: CsmForConditionalGeneration, prompts: list[list[int]], codes: list[torch.Tensor],
                    pick: list[int], batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Every frame of utterances `pick` (end-of-speech frames included) as (F, K) codes, with the (F, H)
    backbone state that predicts it: what the depth decoder sees, teacher-forced, in eval mode."""
    states, frames = [], []
    with evaluating(model):
        for i in range(0, len(pick), batch):
            embeds, labels = make_batch(model, prompts, codes, pick[i:i + batch])
            hidden = model.backbone_model(inputs_embeds=embeds).last_hidden_state
            b, t = (labels[..., 0] != -100).nonzero(as_tuple=True)
            states.append(hidden[b, t - 1])
            frames.append(labels[b, t])
    return torch.cat(states), torch.cat(frames)


def depth_loss(model: CsmForConditionalGeneration, states: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The depth decoder's loss on frames given their backbone states (as transformers computes it in training)."""
    inputs = torch.nn.functional.pad(frames[:, :-1], (1, 0))  # position 0 takes the backbone state
    return model.depth_decoder(input_ids=inputs, backbone_last_hidden_state=states, labels=frames).loss


@torch.no_grad()
def depth_greedy(model: CsmForConditionalGeneration, states: torch.Tensor, first: torch.Tensor,
                 chunk: int = 4096) -> torch.Tensor:
    """Frames (F, K) whose codebook 0 is `first` and whose other codebooks the depth decoder picks greedily,
    one after another, given each frame's backbone state (`chunk` frames at a time)."""
    out = []
    for s, f in zip(states.split(chunk), first.split(chunk), strict=True):
        frames = torch.stack([torch.zeros_like(f), f], 1)  # position 0 takes the backbone state
        for _ in range(model.config.num_codebooks - 1):
            logits = model.depth_decoder(input_ids=frames, backbone_last_hidden_state=s).logits[:, -1]
            frames = torch.cat([frames, logits.argmax(-1, keepdim=True)], 1)
        out.append(frames[:, 1:])
    return torch.cat(out)


@torch.no_grad()
def predicted_codes(model: CsmForConditionalGeneration, prompts: list[list[int]],
                    codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """The LM's greedy codes (frames, K) for every frame of every utterance, teacher-forced on `codes`: the
    backbone sees the true previous frames, so each predicted frame stays aligned with the true audio."""
    states, _ = backbone_states(model, prompts, codes, list(range(len(codes))))
    with evaluating(model):
        frames = depth_greedy(model, states, model.lm_head(states).argmax(-1))
    return [f[:-1].clone() for f in frames.split([len(c) + 1 for c in codes])]  # without end-of-speech frames


def train(args: argparse.Namespace) -> Path:
    setup(args.threads)
    codec = load_codec(args.codec)
    model = build_lm(codec, args.seed, hidden=args.hidden, layers=args.layers, depth_hidden=args.depth_hidden,
                     depth_layers=args.depth_layers)
    if args.depth_only and args.init is None and not (args.out / "last" / "state.json").is_file():
        raise SystemExit("--depth-only trains a depth decoder for a trained backbone: give --init (e.g. "
                         "edge/voices/edge-voice)")
    if args.init is not None:  # a new run starting from trained LM weights; the codec stays --codec's
        trained = CsmForConditionalGeneration.from_pretrained(checkpoint_dir(args.init), use_safetensors=True)
        depth_size = model.config.depth_decoder_config.hidden_size, trained.config.depth_decoder_config.hidden_size
        init_from(model, trained, new_depth_decoder=args.depth_only and depth_size[0] != depth_size[1])
        log.info("initialised the LM from %s", args.init)
    utts, codes = load_codes(model.codec_model, args.data / "train.jsonl", model.config.num_codebooks)
    prompts = text_prompts(utts)
    dev = [i for i, u in enumerate(utts) if is_dev(u["text"], args.dev_every)]
    fit = sorted(set(range(len(utts))) - set(dev))
    if not fit:
        raise SystemExit(f"every utterance of {args.data / 'train.jsonl'} fell in the dev split; raise --dev-every")
    log.info("%d training utterances, %d dev (one in %d)", len(fit), len(dev), args.dev_every)
    if args.depth_only:  # the backbone (and the codebook embeddings it shares) stays as trained
        backbone = {id(p) for p in model.backbone_model.parameters()}
        trainable = [p for p in model.depth_decoder.parameters() if id(p) not in backbone]
    else:
        trainable = [p for n, p in model.named_parameters() if not n.startswith("codec_model.")]
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    ckpt, train_log = args.out / "last", TrainLog(args.out / "log.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    step, seconds = 0, 0.0
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, opt)
        step, seconds = state["step"], state["seconds"]
        log.info("resumed from %s at step %d (%.1f min trained)", ckpt, step, seconds / 60)
    train_log.truncate(step)
    model.train()
    model.codec_model.eval()
    log.info("lm: %.2f M trainable parameters", sum(p.numel() for p in trainable) / 1e6)

    if args.depth_only:
        t = time.perf_counter()
        fit_frames = backbone_states(model, prompts, codes, fit)
        dev_frames = backbone_states(model, prompts, codes, dev) if dev else None
        log.info("backbone states of %d training frames in %.0f s", len(fit_frames[0]), time.perf_counter() - t)

        def losses(gen: torch.Generator) -> dict[str, torch.Tensor]:
            pick = torch.randint(0, len(fit_frames[0]), (args.frames,), generator=gen)
            loss = depth_loss(model, fit_frames[0][pick], fit_frames[1][pick])
            return {"loss": loss, "depth": loss}

        @torch.no_grad()
        def dev_losses() -> dict[str, float]:
            n, total = len(dev_frames[0]), 0.0
            with evaluating(model):
                for i in range(0, n, args.frames):
                    states, frames = dev_frames[0][i:i + args.frames], dev_frames[1][i:i + args.frames]
                    total += depth_loss(model, states, frames).item() * len(frames)
            return {"dev_depth": total / n}
    else:
        def losses(gen: torch.Generator) -> dict[str, torch.Tensor]:
            pick = [fit[i] for i in torch.randint(0, len(fit), (args.batch,), generator=gen).tolist()]
            embeds, labels = make_batch(model, prompts, codes, pick, args.audio_dropout)
            out = model(inputs_embeds=embeds, labels=labels)
            return {"loss": out.loss, "backbone": out.backbone_loss, "depth": out.depth_decoder_loss}

        def dev_losses() -> dict[str, float]:
            return dev_loss(model, prompts, codes, dev, args.batch)

    start = time.perf_counter()
    deadline = start + 60 * args.minutes
    best = best_dev(train_log)

    def checkpoint() -> None:
        nonlocal best
        dev_parts = dev_losses() if dev else {}
        if dev_parts:
            train_log.write({"step": step, **dev_parts})
        save_run(model, opt, ckpt, step, seconds + time.perf_counter() - start, args, train_log, "lm")
        if dev_parts and sum(dev_parts.values()) < best:  # keep the dev minimum: later steps may overfit
            best = sum(dev_parts.values())
            copy_checkpoint(ckpt, args.out / "best")
            log.info("dev loss %.4f is the best so far: copied to %s", best, args.out / "best")

    while (args.steps is None or step < args.steps) and (args.steps is not None or time.perf_counter() < deadline):
        parts = losses(batch_generator(args.seed, step))
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        lr = set_learning_rate(opt, step, args)
        opt.step()
        step += 1
        train_log.add(step, seconds + time.perf_counter() - start, {k: v.item() for k, v in parts.items()},
                      args.log_every, extra={"lr": lr})
        if step % args.save_every == 0:
            checkpoint()
    if step % args.save_every:
        checkpoint()
    return ckpt


def parser() -> argparse.ArgumentParser:
    ap = trainer_parser(__doc__.split("\n\n")[0], "runs/lm", "these LM weights (a CSM checkpoint)",
                        batch=16, warmup=100)
    ap.add_argument("--codec", type=Path, default=Path("runs/codec/last"),
                    help="codec checkpoint directory (a codec or CSM checkpoint)")
    ap.add_argument("--hidden", type=COUNT, default=128)
    ap.add_argument("--layers", type=COUNT, default=4)
    ap.add_argument("--depth-hidden", type=COUNT, default=64)
    ap.add_argument("--depth-layers", type=COUNT, default=2)
    ap.add_argument("--audio-dropout", type=FRACTION, default=0.0,
                    help="dropout on the frames' input embeddings in training (makes the model read the text)")
    ap.add_argument("--depth-only", action="store_true",
                    help="train only the depth decoder (of any --depth-hidden/--depth-layers) for --init's "
                    "backbone, which stays frozen: its states for every frame are computed once")
    ap.add_argument("--frames", type=COUNT, default=2048, help="frames per step with --depth-only")
    ap.add_argument("--dev-every", type=NON_NEGATIVE, default=50,
                    help="hold one utterance in N out of training (by a hash of its text) and log its loss at "
                    "every checkpoint (0: no dev split)")
    return ap


def main() -> None:
    train(parser().parse_args())


if __name__ == "__main__":
    main()
