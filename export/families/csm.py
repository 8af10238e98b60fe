"""Sesame CSM (transformers' `CsmForConditionalGeneration`): backbone + depth decoder + Mimi.

Graphs: `lm_prefill`, `lm_step`, `depth_step` (see `csm_lm.py`) and the streaming Mimi
`codec_decoder` (see `mimi.py`), which decodes the codebooks this model predicts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import CsmConfig, CsmForConditionalGeneration

from edge.errors import EdgeError
from edge.export.families.checkpoint import load_pretrained
from edge.export.families.csm_lm import lm_graphs, lm_manifest
from edge.export.families.mimi import codec_graphs, codec_manifest, randomize
from edge.export.graph import Graph
from edge.presets import BYTE_VOCAB, BYTE_VOCAB_SIZE

# CSM prompts name the speaker as "[N]"; Sesame's model card uses ids 0 and 1 for a two-party conversation.
SPEAKERS = 2


def build_reference(config: dict[str, Any], seed: int) -> CsmForConditionalGeneration:
    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(CsmConfig(**config))
    randomize(model.codec_model)
    return model.eval()


def load_reference(directory: Path) -> CsmForConditionalGeneration:
    return load_pretrained(CsmForConditionalGeneration, directory, "CsmForConditionalGeneration")


def graphs(model: CsmForConditionalGeneration, options: dict[str, Any]) -> tuple[list[Graph], dict[str, Any]]:
    p, c = options["prompt_capacity"], options["kv_capacity"]
    if c <= p:
        raise EdgeError(f"--kv-capacity ({c}) must be larger than --prompt-capacity ({p}) to leave room for audio")
    k = model.config.num_codebooks
    fpc = options.get("frames_per_call", 1)
    lm = lm_graphs(model, p, c)
    decoder = [g for g in codec_graphs(model.codec_model, k, fpc) if g.name == "codec_decoder"]
    manifest = {
        **codec_manifest(model.codec_model, k, fpc),
        **lm_manifest(model, p, c),
        "speakers": SPEAKERS,
        "text_pad_token": int(model.config.pad_token_id),
        "export_options": {"prompt_capacity": p, "kv_capacity": c, "frames_per_call": fpc},
    }
    return lm + decoder, manifest


def tokenizer(model: CsmForConditionalGeneration, checkpoint: Path | None, writer) -> dict[str, Any]:
    src = None if checkpoint is None else Path(checkpoint) / "tokenizer.json"
    # A checkpoint trained on byte-level text (as recipes/voice trains) has no tokenizer.json of its own.
    if src is None or (not src.is_file() and model.config.text_vocab_size == BYTE_VOCAB_SIZE):
        return {"kind": "bytes", "bos": BYTE_VOCAB["bos"], "eos": BYTE_VOCAB["eos"]}
    if not src.is_file():
        raise EdgeError(f"checkpoint '{checkpoint}' has no tokenizer.json; CSM needs its own tokenizer to read text")
    shutil.copyfile(src, writer.path("tokenizer.json"))
    return {"kind": "hf", "file": "tokenizer.json"}
