"""What the voice recipes share: model sizes, data loading, checkpoints, the training log and its plot.

A checkpoint is a directory: the model as a Hugging Face checkpoint (``config.json`` + ``model.safetensors``,
loadable by ``edge export --checkpoint``), ``optimizer.safetensors`` (the optimizer's tensors) and
``state.json`` (step, seconds trained, optimizer hyper-parameters, the recipe's arguments). Batches are drawn
from a generator seeded with (seed, step), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.presets import BYTE_VOCAB, BYTE_VOCAB_SIZE
from edge.runtime.audio import read_wav
from edge.runtime.metrics import test_signal
from recipes.voice.args import COUNT, NON_NEGATIVE, POSITIVE

log = logging.getLogger("recipes.voice")

# The codec: Mimi-shaped (24 kHz, 12.5 frames/s, 1920 samples per frame, split RVQ), small enough to train
# on a CPU and to decode many times faster than real time.
VOICE_MIMI: dict[str, Any] = {
    "sampling_rate": 24000,
    "hidden_size": 64,
    "num_filters": 16,
    "upsampling_ratios": [8, 6, 5, 4],
    "codebook_size": 256,
    "codebook_dim": 32,
    "vector_quantization_hidden_dimension": 32,
    "num_quantizers": 8,
    "num_semantic_quantizers": 1,
    "upsample_groups": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "sliding_window": 16,
}

# The LM: CSM-shaped (backbone over frames, depth decoder over codebooks), byte-level text as csm-tiny.
def voice_csm(codec: dict[str, Any] = VOICE_MIMI, hidden: int = 128, layers: int = 4,
              depth_hidden: int = 64, depth_layers: int = 2) -> dict[str, Any]:
    k, v = codec["num_quantizers"], codec["codebook_size"]
    return {
        "num_codebooks": k,
        "vocab_size": v + 3,
        "codebook_pad_token_id": v + 2,
        "codebook_eos_token_id": 0,
        "text_vocab_size": BYTE_VOCAB_SIZE,
        "pad_token_id": BYTE_VOCAB["pad"],
        "bos_token_id": BYTE_VOCAB["bos"],
        "audio_token_id": BYTE_VOCAB["audio"],
        "audio_eos_token_id": BYTE_VOCAB["audio_eos"],
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden // 4,
        "max_position_embeddings": 1024,
        "depth_decoder_config": {
            "num_codebooks": k,
            "backbone_hidden_size": hidden,
            "vocab_size": v + 3,
            "hidden_size": depth_hidden,
            "intermediate_size": 4 * depth_hidden,
            "num_hidden_layers": depth_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": depth_hidden // 4,
            "max_position_embeddings": k + 1,
        },
        "codec_config": codec,
    }


def setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(threads)


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    """The utterances of a manifest (jsonl): id, text, wav path relative to the manifest, seconds."""
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def load_audio(manifest: Path) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The utterances of a manifest (jsonl) and their 24 kHz audio."""
    utts = read_manifest(manifest)
    audio = []
    for u in utts:
        a, rate = read_wav(manifest.parent / u["wav"])
        if rate != VOICE_MIMI["sampling_rate"]:
            raise SystemExit(f"{u['wav']} is {rate} Hz; the data recipe writes {VOICE_MIMI['sampling_rate']} Hz")
        audio.append(a)
    return utts, audio


def quality_module():
    """``benchmarks/quality.py`` (a script, not a package) as a module: its recognizer and WER."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[2] / "benchmarks"
                                                  / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint_dir(path: Path) -> Path:
    """`path` if it is a checkpoint directory (a ``config.json`` and its weights), else a one-line SystemExit."""
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path} is not a checkpoint directory (config.json + model.safetensors): give a run's "
                         "last/ or best/ directory, or a shipped voice such as edge/voices/edge-voice")
    return path


def load_codec(path: Path):
    """The codec of a checkpoint directory: a Mimi checkpoint (``train_codec``'s), or the codec inside a CSM one
    (``train_lm``'s, or the package's shipped ``edge-voice`` weights)."""
    from transformers import CsmForConditionalGeneration, MimiModel

    checkpoint_dir(path)

    if json.loads((path / "config.json").read_text()).get("model_type") == "csm":
        return CsmForConditionalGeneration.from_pretrained(path, use_safetensors=True).codec_model
    return MimiModel.from_pretrained(path, use_safetensors=True)


@torch.no_grad()
def same_codes(a, b) -> bool:
    """Whether two codecs give the same codes for 8 s of speech-like signal (a decoder tuned with
    ``--autoencoder-steps 0`` does: its encoder and codebooks are the ones it started from)."""
    signal = torch.from_numpy(test_signal(a.config.sampling_rate, seconds=8.0))[None, None]
    return torch.equal(a.encode(signal).audio_codes, b.encode(signal).audio_codes)


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def learning_rate(step: int, base: float, warmup: int, decay_steps: int | None) -> float:
    """Linear warm-up over `warmup` steps, then constant, or with `decay_steps` a cosine decay to a tenth of
    `base` at that step (and a tenth after it), so a long run split across sessions follows one schedule."""
    lr = base * min(1.0, (step + 1) / max(1, warmup))
    if decay_steps and step >= warmup:
        t = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
        lr = base * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))
    return lr


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, args: argparse.Namespace) -> float:
    """Apply the schedule of `trainer_parser`'s --lr / --warmup / --decay-steps for `step`; returns the rate."""
    lr = learning_rate(step, args.lr, args.warmup, args.decay_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def trainer_parser(description: str, out: str, init_help: str, batch: int, warmup: int) -> argparse.ArgumentParser:
    """The options both voice trainers share (data, output, budget, schedule, seed, logging); each adds its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=Path("data/voice"))
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--init", type=Path, help=f"start a new run from {init_help} (e.g. edge/voices/edge-voice); "
                    "ignored when --out already has a checkpoint to resume")
    ap.add_argument("--minutes", type=POSITIVE, default=15.0, help="wall-clock budget of this run")
    ap.add_argument("--steps", type=COUNT, default=None, help="stop at this total step instead of --minutes")
    ap.add_argument("--batch", type=COUNT, default=batch)
    ap.add_argument("--lr", type=POSITIVE, default=1e-3)
    ap.add_argument("--warmup", type=NON_NEGATIVE, default=warmup)
    ap.add_argument("--decay-steps", type=COUNT, help="cosine learning-rate decay to lr/10 at this total step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=COUNT, default=1)
    ap.add_argument("--log-every", type=COUNT, default=10)
    ap.add_argument("--save-every", type=COUNT, default=200)
    return ap


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer's per-parameter state as flat tensors ("<param index>.<name>") and its hyper-parameters."""
    opt = optimizer.state_dict()
    tensors = {f"{i}.{name}": value.contiguous() if torch.is_tensor(value) else torch.tensor(value)
               for i, s in opt["state"].items() for name, value in s.items()}
    return tensors, [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       groups: list[dict[str, Any]]) -> None:
    opt = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    opt["state"] = per_param
    for group, saved in zip(opt["param_groups"], groups, strict=True):
        group.update(saved)
    optimizer.load_state_dict(opt)


Extras = dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]


def save_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    extras: Extras | None = None) -> None:
    """Write a checkpoint directory atomically (a crash leaves the previous one intact). `extras` are other
    trained modules with their optimizers (the codec's discriminator), saved as ``<name>.safetensors`` and
    ``<name>_optimizer.safetensors``."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    state = {**state, "param_groups": groups}
    for name, (module, opt) in (extras or {}).items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
        tensors, state[f"{name}_param_groups"] = _optimizer_tensors(opt)
        save_file(tensors, tmp / f"{name}_optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy checkpoint directory `src` to `dst`, replacing it atomically."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer, extras: Extras | None = None
                    ) -> dict[str, Any]:
    """Restore model weights and optimizer state (and `extras`) saved by `save_checkpoint`; returns its
    state.json."""
    from safetensors.torch import load_file

    # Through from_pretrained: transformers renames keys on save (e.g. Mimi's legacy names) and drops tied copies.
    saved = type(model).from_pretrained(path, use_safetensors=True)
    model.load_state_dict(saved.state_dict())
    state = json.loads((path / "state.json").read_text())
    _restore_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["param_groups"])
    for name, (module, opt) in (extras or {}).items():
        if not (path / f"{name}.safetensors").is_file():
            raise SystemExit(f"{path} has no {name} to resume; resume it with the options it was started with")
        module.load_state_dict(load_file(path / f"{name}.safetensors"))
        _restore_optimizer(opt, load_file(path / f"{name}_optimizer.safetensors"), state[f"{name}_param_groups"])
    return state


def save_run(model, optimizer: torch.optim.Optimizer, ckpt: Path, step: int, seconds: float,
             args: argparse.Namespace, train_log: TrainLog, title: str, extras: Extras | None = None) -> None:
    """Checkpoint a training run (weights, optimizer, step, its arguments) and redraw its loss curves."""
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_checkpoint(ckpt, model, optimizer, {"step": step, "seconds": round(seconds, 1), "args": run_args}, extras)
    train_log.plot(ckpt.parent / "loss.png", title)
    log.info("saved %s (step %d)", ckpt, step)


class TrainLog:
    """Appends one JSON line per logged step to ``log.jsonl`` and draws ``loss.png`` from the whole file."""

    def __init__(self, path: Path):
        self.path = path
        self._sums: dict[str, float] = {}
        self._steps = 0

    def add(self, step: int, elapsed: float, values: dict[str, float], every: int,
            extra: dict[str, float] | None = None) -> None:
        """Add one training step's `values`; every `every` steps, write and log their means since the last time
        (with `extra`, e.g. the learning rate, and `elapsed`, the run's seconds so far)."""
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._steps += 1
        if step % every:
            return
        means = {k: v / self._steps for k, v in self._sums.items()}
        self.write({"step": step, "seconds": round(elapsed, 1), **(extra or {}), **means})
        log.info("step %d  %s  (%.1f min)", step, "  ".join(f"{k} {v:.4g}" for k, v in means.items()), elapsed / 60)
        self._sums, self._steps = {}, 0

    def write(self, record: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, float]]:
        text = self.path.read_text() if self.path.is_file() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    def truncate(self, step: int) -> None:
        """Drop records past `step` (a resumed run repeats the steps after its checkpoint)."""
        if self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def plot(self, out: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        if not records:
            return
        keys = list(dict.fromkeys(k for r in records for k in r if k not in ("step", "seconds", "lr")))
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            steps, values = zip(*[(r["step"], r[key]) for r in records if key in r], strict=True)
            ax.plot(steps, values, marker="." if len(values) < 50 else None)
            if min(values) > 0:
                ax.set_yscale("log")
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        minutes = max(r.get("seconds", 0.0) for r in records) / 60  # dev records carry no time
        fig.suptitle(f"{title} ({minutes:.0f} min)")
        fig.tight_layout()
        fig.savefig(out, dpi=80)
        plt.close(fig)
