"""Built-in presets: a named model family, its reference config and the export capacities.

Configs are plain dicts of transformers config arguments, so this module imports neither
torch nor transformers; the family adapter turns them into reference models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

# Byte-level text vocabulary used by presets without a checkpoint tokenizer:
# ids 0..255 are UTF-8 bytes, then the special tokens below.
BYTE_VOCAB = {"bos": 256, "eos": 257, "pad": 258, "audio": 259, "audio_eos": 260}
BYTE_VOCAB_SIZE = 264

TINY_MIMI: dict[str, Any] = {
    "sampling_rate": 24000,
    "hidden_size": 32,
    "num_filters": 8,
    "upsampling_ratios": [8, 6, 5, 4],
    "codebook_size": 64,
    "codebook_dim": 16,
    "vector_quantization_hidden_dimension": 16,
    "num_quantizers": 8,
    "num_semantic_quantizers": 1,
    "upsample_groups": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 8,
    # Small on purpose: tests then run past the window and exercise the ring-buffer KV cache.
    "sliding_window": 8,
}

TINY_CSM: dict[str, Any] = {
    "num_codebooks": 8,
    "vocab_size": 64 + 3,  # codebook_size + 3 (CSM keeps 2048 + 3 for the real model)
    "codebook_pad_token_id": 64 + 2,
    "codebook_eos_token_id": 0,
    "text_vocab_size": BYTE_VOCAB_SIZE,
    "pad_token_id": BYTE_VOCAB["pad"],
    "bos_token_id": BYTE_VOCAB["bos"],
    "audio_token_id": BYTE_VOCAB["audio"],
    "audio_eos_token_id": BYTE_VOCAB["audio_eos"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "depth_decoder_config": {
        "num_codebooks": 8,
        "backbone_hidden_size": 64,
        "vocab_size": 64 + 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 9,
    },
    "codec_config": TINY_MIMI,
}


# A mid-size CSM: Llama-shaped backbone of 8 layers at width 1024 (122 M parameters in its layers, 189 M with
# the codebook embeddings), the CSM layout of 32 codebooks over 2051 ids, a 4-layer depth decoder, and
# the real Mimi codec config (transformers' MimiConfig defaults). For benchmarks between csm-tiny and csm-1b.
MEDIUM_CSM: dict[str, Any] = {
    **{k: TINY_CSM[k] for k in ("text_vocab_size", "pad_token_id", "bos_token_id", "audio_token_id",
                                "audio_eos_token_id")},
    "num_codebooks": 32,
    "vocab_size": 2048 + 3,
    "codebook_pad_token_id": 2048 + 2,
    "codebook_eos_token_id": 0,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "depth_decoder_config": {
        "num_codebooks": 32,
        "backbone_hidden_size": 1024,
        "vocab_size": 2048 + 3,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 33,
    },
}


# What export reads of a shipped checkpoint (training.json beside them is a record, not an input).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "generation_config.json")


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    description: str
    config: dict[str, Any]
    # Random weights are drawn with this seed when no checkpoint is given.
    seed: int = 0
    # Export capacities: fixed shapes of the prompt and of the KV caches.
    options: dict[str, Any] = field(default_factory=dict)
    # Trained weights shipped inside the package: a Hugging Face checkpoint directory (config.json,
    # model.safetensors, optionally generation_config.json) relative to this file. Export loads them unless
    # --checkpoint says otherwise.
    weights: str | None = None

    @property
    def weights_dir(self) -> Path | None:
        return None if self.weights is None else Path(__file__).parent / self.weights

    def weights_digest(self) -> str:
        """sha256 of the shipped checkpoint ("" without): names the cached export, so new weights (or new
        recommended sampling) re-export."""
        return "" if self.weights_dir is None else _digest(self.weights_dir)


@cache
def _digest(directory: Path) -> str:
    if not (directory / "model.safetensors").is_file():
        raise EdgeError(f"the package's voice weights are missing ({directory}); reinstall edge-codec-tts")
    h = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        if (directory / name).is_file():
            h.update(name.encode())
            with (directory / name).open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "edge-voice",
            "csm",
            "edge's own English voice (default): a CSM-shaped LM (byte-level text) and a Mimi-shaped codec, "
            "trained by recipes/voice on a Piper teacher's speech; weights ship in the package.",
            {},
            weights="voices/edge-voice",
            options={"prompt_capacity": 144, "kv_capacity": 256},
        ),
        Preset(
            "csm-tiny",
            "csm",
            "Tiny CSM-shaped model with a tiny Mimi-shaped codec, seeded random weights "
            "(exports and runs in seconds, for tests; babbles).",
            TINY_CSM,
            options={"prompt_capacity": 64, "kv_capacity": 192},
        ),
        Preset(
            "csm-1b",
            "csm",
            "Sesame CSM-1B shapes (Llama-1B backbone, 32 codebooks, Mimi at 24 kHz / 12.5 Hz); "
            "random weights unless --checkpoint gives the real ones.",
            {},  # transformers' CsmConfig defaults are the CSM-1B shapes
            options={"prompt_capacity": 128, "kv_capacity": 512},
        ),
        Preset(
            "csm-medium",
            "csm",
            "Mid-size CSM-shaped model (8-layer, 1024-wide backbone, 32 codebooks) with the real Mimi codec "
            "config, seeded random weights (for benchmarks; babbles).",
            MEDIUM_CSM,
            options={"prompt_capacity": 64, "kv_capacity": 256},
        ),
        Preset("mimi", "mimi", "Kyutai Mimi codec, real config (24 kHz, 12.5 Hz, 32 codebooks).", {}),
        Preset("mimi-tiny", "mimi", "Tiny Mimi-shaped codec with seeded random weights.", TINY_MIMI),
    ]
}

DEFAULT_PRESET = "edge-voice"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise EdgeError(
            f"unknown preset '{name}'; known presets: {', '.join(PRESETS)} "
            "(or pass --checkpoint DIR for a local Hugging Face checkpoint)"
        ) from None
