"""Train the voice's Mimi-shaped streaming codec on the data recipe's audio.

The model is transformers' `MimiModel` (config `VOICE_MIMI`), so `edge export mimi-tiny --checkpoint DIR`
exports a checkpoint unchanged. transformers' Mimi quantizer is inference-only (its codebooks are buffers:
``embed_sum / cluster_usage``), so training quantizes here with the same tables: nearest centroid per
residual stage, straight-through gradients, a commitment loss pulling the encoder towards its centroids,
and the tables updated as exponential moving averages of the vectors assigned to them (with unused codes
restarted on random batch vectors). Mimi's split RVQ: one "semantic" codebook and ``K - 1`` acoustic
ones quantize the same latents in parallel, their decoded sums added.

Losses: L1 on the waveform, L1 on log-mel spectrograms at several resolutions, the commitment loss. As in
Mimi's training, half the crops skip quantization (``--skip-quantizer``): without that, the commitment loss
wins and the encoder collapses onto a handful of codes (seen here: 2 to 4 codes in use per codebook).

    python -m recipes.voice.train_codec --data data/voice --out runs/codec --minutes 15
    python -m recipes.voice.train_codec --data data/voice --out runs/codec --minutes 60   # resumes

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
from transformers import MimiConfig, MimiModel

from edge.quantize.accuracy import mel_filters
from recipes.voice.common import (
    VOICE_MIMI,
    TrainLog,
    batch_generator,
    learning_rate,
    load_audio,
    load_checkpoint,
    load_codec,
    save_run,
    setup,
)

log = logging.getLogger("recipes.voice.train_codec")

MEL_SCALES = (256, 512, 1024, 2048)  # n_fft of each mel loss; hop = n_fft / 4, n_mels = n_fft / 16 (>= 16)


def build_codec(config: dict[str, Any] = VOICE_MIMI, seed: int = 0) -> MimiModel:
    torch.manual_seed(seed)
    return MimiModel(MimiConfig(**config))


def codebooks(model: MimiModel) -> list[tuple[Any, list[Any]]]:
    """(residual VQ, its codebooks) for the semantic and the acoustic quantizer."""
    q = model.quantizer
    return [(rvq, [layer.codebook for layer in rvq.layers])
            for rvq in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer)]


def quantize(model: MimiModel, latents: torch.Tensor, decay: float, update: bool,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """latents (B, hidden, T) → (quantized latents with straight-through gradients, codes (B, K, T), commitment)."""
    out = torch.zeros_like(latents)
    commit = latents.new_zeros(())
    codes = []
    for rvq, books in codebooks(model):
        x = rvq.input_proj(latents) if rvq.input_proj is not None else latents
        flat = x.transpose(1, 2).reshape(-1, x.shape[1])  # (B*T, D)
        residual, total = flat, torch.zeros_like(flat)
        for cb in books:
            if update and not bool(cb.initialized.item()):
                _init_codebook(cb, residual.detach(), gen)
            table = cb.embed_sum / cb.cluster_usage.clamp(min=cb.epsilon)[:, None]
            index = torch.cdist(residual.detach()[None], table[None])[0].argmin(dim=-1)
            chosen = table[index]
            commit = commit + F.mse_loss(residual, chosen.detach())
            if update:
                _ema_update(cb, residual.detach(), index, decay, gen)
            total = total + chosen
            residual = residual - chosen.detach()
            codes.append(index.view(x.shape[0], x.shape[2]))
        q = flat + (total - flat).detach()  # straight-through
        q = q.view(x.shape[0], x.shape[2], -1).transpose(1, 2)
        out = out + (rvq.output_proj(q) if rvq.output_proj is not None else q)
    for _, books in codebooks(model):
        for cb in books:
            cb._embed = None  # transformers caches the centroids; they changed
    return out, torch.stack(codes, dim=1), commit / len(codes)


@torch.no_grad()
def _init_codebook(cb, vectors: torch.Tensor, gen: torch.Generator | None) -> None:
    pick = torch.randint(0, vectors.shape[0], (cb.embed_sum.shape[0],), generator=gen)
    cb.embed_sum.copy_(vectors[pick])
    cb.cluster_usage.fill_(1.0)
    cb.initialized.fill_(1.0)


@torch.no_grad()
def _ema_update(cb, vectors: torch.Tensor, index: torch.Tensor, decay: float, gen: torch.Generator | None,
                dead: float = 0.05) -> None:
    n = cb.embed_sum.shape[0]
    counts = torch.bincount(index, minlength=n).to(vectors.dtype)
    sums = torch.zeros_like(cb.embed_sum).index_add_(0, index, vectors)
    cb.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
    cb.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    # Restart codes nobody uses on random vectors of this batch.
    stale = cb.cluster_usage < dead
    if stale.any():
        pick = torch.randint(0, vectors.shape[0], (int(stale.sum()),), generator=gen)
        cb.embed_sum[stale] = vectors[pick]
        cb.cluster_usage[stale] = 1.0


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


def random_crops(audio: list[np.ndarray], batch: int, samples: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` random crops of `samples` samples (utterances shorter than that are zero-padded)."""
    out = torch.zeros(batch, 1, samples)
    for b in range(batch):
        a = audio[int(torch.randint(0, len(audio), (1,), generator=gen))]
        start = int(torch.randint(0, max(1, a.size - samples + 1), (1,), generator=gen))
        crop = torch.from_numpy(a[start:start + samples])
        out[b, 0, :crop.numel()] = crop
    return out


def train(args: argparse.Namespace) -> Path:
    setup(args.threads)
    _, audio = load_audio(args.data / "train.jsonl")
    model = build_codec(seed=args.seed)
    if args.init is not None:  # a new run starting from trained weights (fresh optimizer and schedule)
        model.load_state_dict(load_codec(args.init).state_dict())
        log.info("initialised from %s", args.init)
    else:  # codebooks start uninitialised; the first batch's latents seed them
        for _, books in codebooks(model):
            for cb in books:
                cb.initialized.fill_(0.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    ckpt, train_log = args.out / "last", TrainLog(args.out / "log.jsonl")
    args.out.mkdir(parents=True, exist_ok=True)
    step, seconds = 0, 0.0
    if (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, model, opt)
        step, seconds = state["step"], state["seconds"]
        log.info("resumed from %s at step %d (%.1f min trained)", ckpt, step, seconds / 60)
    train_log.truncate(step)
    mel_loss = MelLoss(VOICE_MIMI["sampling_rate"])
    samples = args.frames * 1920
    log.info("codec: %.2f M parameters, %d training utterances (%.2f h)", sum(p.numel() for p in model.parameters())
             / 1e6, len(audio), sum(a.size for a in audio) / VOICE_MIMI["sampling_rate"] / 3600)
    start = time.perf_counter()
    deadline = start + 60 * args.minutes
    while (args.steps is None or step < args.steps) and (args.steps is not None or time.perf_counter() < deadline):
        gen = batch_generator(args.seed, step)
        x = random_crops(audio, args.batch, samples, gen)
        latents = model.encoder(x).latents
        q, codes, commit = quantize(model, latents, args.ema_decay, update=True, gen=gen)
        # As Mimi's training: each crop skips quantization with probability --skip-quantizer, so the encoder
        # and decoder keep learning a rich latent while the codebooks catch up with it.
        skip = torch.rand(x.shape[0], generator=gen) < args.skip_quantizer
        q = torch.where(skip[:, None, None], latents, q)
        y = model.decoder(q).audio_values[..., :samples]
        l1, mel = F.l1_loss(y, x), mel_loss(y[:, 0], x[:, 0])
        loss = args.w_l1 * l1 + args.w_mel * mel + args.w_commit * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = learning_rate(step, args.lr, args.warmup, args.decay_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        step += 1
        # Distinct codes per codebook in this batch: a collapsing codebook shows here first.
        used = sum(len(torch.unique(codes[:, i])) for i in range(codes.shape[1])) / codes.shape[1]
        train_log.add(step, seconds + time.perf_counter() - start, {
            "loss": loss.item(), "l1": l1.item(), "mel": mel.item(), "commit": commit.item(), "codes_used": used,
        }, args.log_every, extra={"lr": lr})
        if step % args.save_every == 0:
            save_run(model, opt, ckpt, step, seconds + time.perf_counter() - start, args, train_log, "codec")
    if step % args.save_every:
        save_run(model, opt, ckpt, step, seconds + time.perf_counter() - start, args, train_log, "codec")
    return ckpt


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/voice"))
    ap.add_argument("--out", type=Path, default=Path("runs/codec"))
    ap.add_argument("--init", type=Path, help="start a new run from these weights (a codec or CSM checkpoint, e.g. "
                    "edge/voices/edge-voice); ignored when --out already has a checkpoint to resume")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of this run")
    ap.add_argument("--steps", type=int, default=None, help="stop at this total step instead of --minutes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=12, help="crop length in 80 ms frames")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--decay-steps", type=int, help="cosine learning-rate decay to lr/10 at this total step")
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--w-l1", type=float, default=1.0)
    ap.add_argument("--w-mel", type=float, default=1.0)
    ap.add_argument("--w-commit", type=float, default=0.25)
    ap.add_argument("--skip-quantizer", type=float, default=0.5, help="probability a crop is not quantized")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--save-every", type=int, default=200)
    return ap


def main() -> None:
    train(parser().parse_args())


if __name__ == "__main__":
    main()
