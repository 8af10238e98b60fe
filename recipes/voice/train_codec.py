"""Train the voice's Mimi-shaped streaming codec on the data recipe's audio, in two phases.

The model is transformers' `MimiModel` (config `VOICE_MIMI`), so `edge export mimi-tiny --checkpoint DIR`
exports a checkpoint unchanged. transformers' Mimi quantizer is inference-only (its codebooks are buffers:
``embed_sum / cluster_usage``), so the codebooks are fitted here:

1. ``--autoencoder-steps``: encoder and decoder learn as an autoencoder through the quantizer's projections,
   without quantization. Losses: L1 on the waveform, L1 on log-mel spectrograms at several resolutions.
2. Then the codebooks are fitted once by residual k-means on the encoder's latents of all the training
   audio (each stage on what the stages before it leave), encoder and quantizer are frozen, and the decoder
   goes on learning to decode the quantized latents, with the same losses.

Why not the usual joint training (straight-through gradients, a commitment loss, EMA codebooks, Mimi's
quantizer skipping for some crops): on this CPU budget it collapsed twice. The commitment loss is cheapest
to meet by making the latents say nothing: their spread over time fell 20x within 1000 steps, and 2 to 5
codes per codebook stayed in use, with a held-out log-mel distance of 16 dB through the codes. A frozen
encoder cannot collapse, and k-means uses every code.

    python -m recipes.voice.train_codec --data data/voice --out runs/codec --minutes 60
    python -m recipes.voice.train_codec --data data/voice --out runs/codec --minutes 60   # resumes
    python -m recipes.voice.train_codec --init runs/codec/last --autoencoder-steps 0 --out runs/codec2 ...

The last form is phase 2 alone: a new run that keeps the encoder and codebooks of ``--init`` and tunes only
its decoder, so an LM trained on the old codec's codes stays valid (``recipes.voice.ship`` checks that).
With ``--num-filters`` wider than ``--init``'s, that run first widens the codec without changing what it
computes (`widen`): the decoder gains capacity while the codes, and so the LM, stay as they are.

``--lm-codes LM`` (phase 2 only) also shows the decoder the codes an LM trained on this codec's codes
predicts (as vocoders are tuned on a TTS model's predicted features): the LM runs teacher-forced over every
training utterance (`train_lm.predicted_codes`, once, cached beside the manifest as ``lm-codes-<key>.pt``), so
its greedy frames stay aligned with the true audio, and ``--lm-share`` of each batch is crops of those frames,
decoded against the audio under them. Measured once (half of each batch, 5,000 steps from the shipped voice)
it has not paid: the voice's WER on 400 held-out sentences was 0.581, against 0.579 for the same tuning on
true codes alone.

``--w-adv W`` adds a two-resolution STFT discriminator (hinge loss, plus feature matching weighted by
``--w-feat``); its weights and optimizer go into the checkpoint. Measured on this CPU it has not paid yet: 80
minutes of decoder tuning with it raised the codec-only WER from 0.453 to 0.563.

Checkpoints (``runs/codec/last``) every ``--save-every`` steps and at the end; ``log.jsonl`` and
``loss.png`` beside them.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812
from transformers import CsmForConditionalGeneration, MimiConfig, MimiModel

from edge.export.families.mimi import samples_per_frame
from edge.runtime.metrics import mel_filters
from recipes.voice.args import COUNT, FRACTION, NON_NEGATIVE, WEIGHT
from recipes.voice.common import (
    VOICE_MIMI,
    TrainLog,
    batch_generator,
    checkpoint_dir,
    load_audio,
    load_checkpoint,
    load_codec,
    same_codes,
    save_run,
    set_learning_rate,
    setup,
    trainer_parser,
)
from recipes.voice.train_lm import cached, load_codes, predicted_codes, text_prompts

log = logging.getLogger("recipes.voice.train_codec")

MEL_SCALES = (256, 512, 1024, 2048)  # n_fft of each mel loss; hop = n_fft / 4, n_mels = n_fft / 16 (>= 16)


def build_codec(config: dict[str, Any] = VOICE_MIMI, seed: int = 0) -> MimiModel:
    torch.manual_seed(seed)
    return MimiModel(MimiConfig(**config))


NEW_CHANNEL_SCALE = 0.1


@torch.no_grad()
def widen(model: MimiModel, num_filters: int, seed: int = 0) -> MimiModel:
    """`model` with ``num_filters`` convolution channels (more than its own), computing the same function.

    Mimi's config shares ``num_filters`` between encoder and decoder, so both widen. Every convolution keeps
    its trained weights in the old channels; the new channels start from a tenth of the usual random
    initialisation, and no old channel reads a new one (those weights are zero). So encoder, codes and decoded
    audio are unchanged, up to float rounding, and the decoder's new channels learn from the first step (the
    weights that read them get gradients because the new channels are not zero). At full scale, Adam's first
    steps on those zero weights let the new channels' noise in: over 40 steps the mel loss rose twice as
    much as the narrow codec's under the same schedule; at a tenth it rose as much."""
    old = model.config.num_filters
    if num_filters < old:
        raise SystemExit(f"--num-filters {num_filters} is narrower than --init's {old}; a codec can only widen")
    wide = build_codec({**model.config.to_dict(), "num_filters": num_filters}, seed)
    trained, convs = dict(model.named_modules()), set()
    for name, module in wide.named_modules():
        if not isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            continue
        convs |= {f"{name}.weight", f"{name}.bias"}
        src = trained[name]
        out_dim, in_dim = (1, 0) if isinstance(module, torch.nn.ConvTranspose1d) else (0, 1)
        old_reads_new = [slice(None)] * 3
        old_reads_new[out_dim] = slice(0, src.weight.shape[out_dim])
        old_reads_new[in_dim] = slice(src.weight.shape[in_dim], None)
        module.weight.mul_(NEW_CHANNEL_SCALE)
        module.weight[tuple(old_reads_new)] = 0
        module.weight[tuple(slice(0, n) for n in src.weight.shape)] = src.weight
        if module.bias is not None:
            module.bias.mul_(NEW_CHANNEL_SCALE)
            module.bias[:src.bias.numel()] = src.bias
    wide.load_state_dict({k: v for k, v in model.state_dict().items() if k not in convs}, strict=False)
    log.info("widened the codec from %d to %d filters (%.2f M → %.2f M parameters)", old, num_filters,
             sum(p.numel() for p in model.parameters()) / 1e6, sum(p.numel() for p in wide.parameters()) / 1e6)
    return wide


def codebooks(model: MimiModel) -> list[tuple[Any, list[Any]]]:
    """(residual VQ, its codebooks) for the semantic and the acoustic quantizer."""
    q = model.quantizer
    return [(rvq, [layer.codebook for layer in rvq.layers])
            for rvq in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer)]


def quantize(model: MimiModel, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """latents (B, hidden, T) → (decoder input, codes (B, K, T)): nearest centroid per residual stage, as
    transformers' Mimi quantizer encodes and decodes (its tables: ``embed_sum / cluster_usage``)."""
    out, codes = torch.zeros_like(latents), []
    for rvq, books in codebooks(model):
        x = rvq.input_proj(latents)
        flat = x.transpose(1, 2).reshape(-1, x.shape[1])  # (B*T, D)
        residual, total = flat, torch.zeros_like(flat)
        for cb in books:
            table = cb.embed_sum / cb.cluster_usage.clamp(min=cb.epsilon)[:, None]
            index = torch.cdist(residual[None], table[None])[0].argmin(dim=-1)
            total = total + table[index]
            residual = residual - table[index]
            codes.append(index.view(x.shape[0], x.shape[2]))
        out = out + rvq.output_proj(total.view(x.shape[0], x.shape[2], -1).transpose(1, 2))
    return out, torch.stack(codes, dim=1)


def bottleneck(model: MimiModel, latents: torch.Tensor) -> torch.Tensor:
    """The quantizer's path without quantization (phase 1): both projections, summed as Mimi's split RVQ sums."""
    return sum(rvq.output_proj(rvq.input_proj(latents)) for rvq, _ in codebooks(model))


@torch.no_grad()
def fit_codebooks(model: MimiModel, audio: list[np.ndarray], gen: torch.Generator, iters: int = 20) -> None:
    """Residual k-means: each codebook's centroids fitted to what the stages before it leave over, on the
    encoder's latents of all the training audio."""
    model.eval()
    latents = torch.cat([model.encoder(torch.from_numpy(a)[None, None]).latents[0].T for a in audio])
    for rvq, books in codebooks(model):
        residual = rvq.input_proj(latents.T[None])[0].T
        for cb in books:
            table = kmeans(residual, cb.embed_sum.shape[0], iters, gen)
            cb.embed_sum.copy_(table)
            cb.cluster_usage.fill_(1.0)
            cb.initialized.fill_(1.0)
            cb._embed = None  # transformers caches the centroids
            residual = residual - table[torch.cdist(residual[None], table[None])[0].argmin(dim=-1)]
    log.info("fitted %d codebooks on %d latent frames", sum(len(b) for _, b in codebooks(model)), len(latents))
    model.train()


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    centroids = x[torch.randint(0, len(x), (k,), generator=gen)]
    for _ in range(iters):
        index = torch.cdist(x[None], centroids[None])[0].argmin(dim=-1)
        counts = torch.bincount(index, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, index, x)
        empty = counts == 0  # an empty cluster restarts on a random vector
        centroids = torch.where(empty[:, None], x[torch.randint(0, len(x), (k,), generator=gen)],
                                sums / counts.clamp(min=1)[:, None])
    return centroids


class MelLoss(torch.nn.Module):
    """Multi-scale mel loss: L1 of log-mel spectrograms (floored at 1e-4), averaged over `MEL_SCALES`."""

    def __init__(self, sample_rate: int):
        super().__init__()
        self.scales = MEL_SCALES
        for n_fft in self.scales:
            fb = torch.tensor(mel_filters(sample_rate, n_fft, max(16, n_fft // 16)), dtype=torch.float32)
            self.register_buffer(f"fb{n_fft}", fb, persistent=False)
            self.register_buffer(f"win{n_fft}", torch.hann_window(n_fft), persistent=False)

    def mel(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        spec = torch.stft(x, n_fft, n_fft // 4, window=getattr(self, f"win{n_fft}"), return_complex=True).abs()
        return getattr(self, f"fb{n_fft}") @ spec

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = pred.new_zeros(())
        for n_fft in self.scales:
            a, b = self.mel(pred, n_fft), self.mel(target, n_fft)
            loss = loss + F.l1_loss(torch.log(a + 1e-4), torch.log(b + 1e-4))
        return loss / len(self.scales)


class SpectrogramDiscriminator(torch.nn.Module):
    """One resolution of a multi-resolution STFT discriminator (as in EnCodec): 2D convolutions over the
    complex spectrogram, real and imaginary parts as two channels, striding over frequency and dilating over
    time. Returns a score map and the activations of each layer (for feature matching)."""

    def __init__(self, n_fft: int, channels: int = 8):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        conv = torch.nn.Conv2d
        self.layers = torch.nn.ModuleList([
            conv(2, channels, (3, 9), padding=(1, 4)),
            *[conv(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)) for d in (1, 2, 4)],
            conv(channels, channels, (3, 3), padding=(1, 1)),
        ])
        self.out = conv(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, time, freq)
        features = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            features.append(h)
        return self.out(h), features


class Discriminator(torch.nn.Module):
    """Multi-resolution STFT discriminator: one `SpectrogramDiscriminator` per n_fft."""

    def __init__(self, scales: tuple[int, ...] = (1024, 2048)):
        super().__init__()
        self.scales = torch.nn.ModuleList(SpectrogramDiscriminator(n) for n in scales)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(x) for d in self.scales]


def discriminator_loss(disc: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator, averaged over its resolutions."""
    losses = [F.relu(1 - r).mean() + F.relu(1 + f).mean()
              for (r, _), (f, _) in zip(disc(real), disc(fake.detach()), strict=True)]
    return sum(losses) / len(losses)


def generator_losses(disc: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hinge adversarial loss, feature matching loss) of the decoder's output: the L1 distance of each
    discriminator layer's activations to the real audio's, relative to their mean magnitude."""
    adv, feat = [], []
    with torch.no_grad():
        real_out = disc(real)
    for (score, fake_feats), (_, real_feats) in zip(disc(fake), real_out, strict=True):
        adv.append(F.relu(1 - score).mean())
        feat.append(sum(F.l1_loss(f, r) / (r.abs().mean() + 1e-8) for f, r in zip(fake_feats, real_feats,
                                                                               strict=True)) / len(real_feats))
    return sum(adv) / len(adv), sum(feat) / len(feat)


def random_crops(audio: list[np.ndarray], batch: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` random crops of `samples` samples (utterances shorter than that are zero-padded)."""
    out = torch.zeros(batch, 1, samples)
    for b in range(batch):
        a = audio[int(torch.randint(0, len(audio), (1,), generator=gen))]
        start = int(torch.randint(0, max(1, a.size - samples + 1), (1,), generator=gen))
        crop = torch.from_numpy(a[start:start + samples])
        out[b, 0, :crop.numel()] = crop
    return out


def lm_code_crops(codes: list[torch.Tensor], audio: list[np.ndarray], batch: int, frames: int, spf: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` random crops of `frames` frames of `spf` samples, aligned to frame boundaries: (codes (B, K,
    frames), the true audio under them (B, 1, frames * spf)). Shorter utterances are padded (codes repeat
    their last frame, audio is zero)."""
    out_codes = torch.zeros(batch, codes[0].shape[1], frames, dtype=torch.long)
    out_audio = torch.zeros(batch, 1, frames * spf)
    for b in range(batch):
        i = int(torch.randint(0, len(codes), (1,), generator=gen))
        start = int(torch.randint(0, max(1, len(codes[i]) - frames + 1), (1,), generator=gen))
        crop = codes[i][start:start + frames]
        out_codes[b] = torch.cat([crop, crop[-1:].expand(frames - len(crop), -1)]).T
        wave = torch.from_numpy(audio[i][start * spf:(start + frames) * spf])
        out_audio[b, 0, :wave.numel()] = wave
    return out_codes, out_audio


def load_lm_codes(lm_dir: Path, codec: MimiModel, manifest: Path) -> list[torch.Tensor]:
    """The codes the LM of `lm_dir` predicts for every training utterance, teacher-forced (`predicted_codes`,
    cached beside the manifest), after checking that `codec` codes audio as the LM's codec does."""
    lm = CsmForConditionalGeneration.from_pretrained(checkpoint_dir(lm_dir), use_safetensors=True).eval()
    if not same_codes(lm.codec_model, codec):
        raise SystemExit(f"--lm-codes {lm_dir} was trained on another codec's codes; give an LM trained on the "
                         "codes of --init's codec")
    k = lm.config.num_codebooks

    def predict() -> list[torch.Tensor]:  # only when the cache lacks them: the true codes may need encoding
        utts, codes = load_codes(lm.codec_model, manifest, k)
        return predicted_codes(lm, text_prompts(utts), codes)

    return cached("lm-codes", lm, manifest, k, predict)


def train(args: argparse.Namespace) -> Path:
    setup(args.threads)
    if args.autoencoder_steps == 0 and args.init is None:
        raise SystemExit("--autoencoder-steps 0 tunes the decoder of --init's codec; give --init")
    if args.lm_codes is not None and args.autoencoder_steps > 0:
        raise SystemExit("--lm-codes tunes the decoder of a trained codec on an LM's codes for it: give --init "
                         "and --autoencoder-steps 0")
    _, audio = load_audio(args.data / "train.jsonl")
    ckpt, train_log = args.out / "last", TrainLog(args.out / "log.jsonl")
    if (ckpt / "state.json").is_file():  # resumed below; the checkpoint's config says how wide it is
        model = build_codec(MimiConfig.from_pretrained(ckpt).to_dict(), args.seed)
        if args.num_filters not in (None, model.config.num_filters):
            raise SystemExit(f"{ckpt} has {model.config.num_filters} filters, not --num-filters {args.num_filters}; "
                             "resume it without --num-filters, or give another --out")
    elif args.init is not None:  # a new run starting from trained weights (fresh optimizer and schedule)
        model = load_codec(args.init)
        if args.num_filters is not None and args.num_filters != model.config.num_filters:
            model = widen(model, args.num_filters, args.seed)
        log.info("initialised from %s", args.init)
    else:
        model = build_codec({**VOICE_MIMI, "num_filters": args.num_filters or VOICE_MIMI["num_filters"]}, args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    extras = {}
    if args.w_adv > 0:
        torch.manual_seed(args.seed + 1)
        disc = Discriminator()
        extras["discriminator"] = disc, torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.8, 0.99),
                                                          weight_decay=0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    step, seconds = 0, 0.0
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, opt, extras)
        step, seconds = state["step"], state["seconds"]
        log.info("resumed from %s at step %d (%.1f min trained)", ckpt, step, seconds / 60)
    train_log.truncate(step)
    lm_codes = load_lm_codes(args.lm_codes, model, args.data / "train.jsonl") if args.lm_codes else None
    n_lm = min(round(args.batch * args.lm_share), args.batch - 1) if lm_codes else 0  # one true crop at least
    mel_loss = MelLoss(VOICE_MIMI["sampling_rate"])
    spf = samples_per_frame(model.config)
    samples = args.frames * spf
    log.info("codec: %.2f M parameters, %d training utterances (%.2f h)", sum(p.numel() for p in model.parameters())
             / 1e6, len(audio), sum(a.size for a in audio) / VOICE_MIMI["sampling_rate"] / 3600)
    start = time.perf_counter()
    deadline = start + 60 * args.minutes
    while (args.steps is None or step < args.steps) and (args.steps is not None or time.perf_counter() < deadline):
        gen = batch_generator(args.seed, step)
        quantized = step >= args.autoencoder_steps
        # A run resumed later has the fitted codebooks in its checkpoint; with 0 they are --init's.
        if step == args.autoencoder_steps > 0:
            fit_codebooks(model, audio, gen)
        if quantized:
            model.encoder.requires_grad_(False)
            model.quantizer.requires_grad_(False)
        x = random_crops(audio, args.batch - n_lm, samples, gen)
        latents = model.encoder(x).latents
        if quantized:
            z, codes = quantize(model, latents)
        else:
            z, codes = bottleneck(model, latents), None
        if n_lm:  # crops decoded from the LM's codes, against the true audio under them
            predicted, truth = lm_code_crops(lm_codes, audio, n_lm, args.frames, spf, gen)
            with torch.no_grad():
                z = torch.cat([z, model.quantizer.decode(predicted)])
            x = torch.cat([x, truth])
        y = model.decoder(z).audio_values[..., :samples]
        l1, mel = F.l1_loss(y, x), mel_loss(y[:, 0], x[:, 0])
        loss = args.w_l1 * l1 + args.w_mel * mel
        values = {}
        if extras:
            disc, disc_opt = extras["discriminator"]
            d_loss = discriminator_loss(disc, x[:, 0], y[:, 0])
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            set_learning_rate(disc_opt, step, args)
            disc_opt.step()
            disc.requires_grad_(False)  # the decoder's step: gradients flow through the discriminator only
            adv, feat = generator_losses(disc, x[:, 0], y[:, 0])
            disc.requires_grad_(True)
            loss = loss + args.w_adv * adv + args.w_feat * feat
            values = {"disc": d_loss.item(), "adv": adv.item(), "feat": feat.item()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = set_learning_rate(opt, step, args)
        opt.step()
        step += 1
        values = {"loss": loss.item(), "l1": l1.item(), "mel": mel.item(), **values}
        if codes is not None:  # distinct codes per codebook in this batch
            values["codes_used"] = sum(len(torch.unique(codes[:, i])) for i in range(codes.shape[1])) / codes.shape[1]
        train_log.add(step, seconds + time.perf_counter() - start, values, args.log_every, extra={"lr": lr})
        if step % args.save_every == 0:
            save_run(model, opt, ckpt, step, seconds + time.perf_counter() - start, args, train_log, "codec",
                     extras)
    if step % args.save_every:
        save_run(model, opt, ckpt, step, seconds + time.perf_counter() - start, args, train_log, "codec",
                     extras)
    return ckpt


def parser() -> argparse.ArgumentParser:
    ap = trainer_parser(__doc__.split("\n\n")[0], "runs/codec", "these weights (a codec or CSM checkpoint)",
                        batch=8, warmup=0)
    ap.add_argument("--frames", type=COUNT, default=12, help="crop length in 80 ms frames")
    ap.add_argument("--w-l1", type=WEIGHT, default=1.0)
    ap.add_argument("--w-mel", type=WEIGHT, default=1.0)
    ap.add_argument("--w-adv", type=WEIGHT, default=0.0,
                    help="weight of the adversarial loss of a multi-resolution STFT discriminator (0: none)")
    ap.add_argument("--w-feat", type=WEIGHT, default=2.0, help="weight of its feature matching loss (with --w-adv)")
    ap.add_argument("--num-filters", type=COUNT, help="convolution width (default: --init's, or "
                    f"{VOICE_MIMI['num_filters']}); wider than --init's widens it without changing its output")
    ap.add_argument("--autoencoder-steps", type=NON_NEGATIVE, default=3000,
                    help="phase 1 length: train encoder and decoder without quantization, then fit the codebooks "
                    "(0: keep --init's encoder and codebooks and tune its decoder only)")
    ap.add_argument("--lm-codes", type=Path,
                    help="an LM checkpoint trained on --init's codes (e.g. edge/voices/edge-voice): part of each "
                    "batch is decoded from the codes it predicts, teacher-forced, so the decoder learns to make "
                    "the true audio from the LM's imperfect codes")
    ap.add_argument("--lm-share", type=FRACTION, default=0.5, help="share of each batch from --lm-codes")
    return ap


def main() -> None:
    train(parser().parse_args())


if __name__ == "__main__":
    main()
