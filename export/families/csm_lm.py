"""The language-model half of Sesame CSM as exportable graphs with explicit, fixed-capacity KV caches.

CSM predicts one audio frame (``K`` codebook tokens) per backbone step:

1. ``lm_prefill`` runs the backbone over the text prompt and returns the codebook-0 logits and the
   final-normed hidden state at the last real prompt position, plus the backbone KV cache;
2. ``depth_step`` is called ``K`` times per frame: at position 0 with the backbone hidden (its logits
   are unused), then at position ``p`` (1..K-1) with codebook ``p-1``'s code, giving codebook ``p``'s
   logits;
3. ``lm_step`` embeds the finished frame (sum of the ``K`` codebook embeddings) at the next position
   and gives the next frame's codebook-0 logits and hidden state.

Every module reuses the reference model's submodules (projections, MLPs, norms, rotary embedding,
embeddings and heads), so the weights are shared, not copied. Caches are single tensors shaped
``(layers, 2, 1, kv_heads, capacity, head_dim)`` (2 = keys, values); a step attends to the slots before
its position (masked) and its own, and returns only its own keys and values and their slot (a written
state, see `edge.runtime.state`): the runtime writes them into its cache, so no step copies the cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import CsmForConditionalGeneration
from transformers.models.csm.modeling_csm import CsmDecoderLayer, apply_rotary_pos_emb

from edge.export.graph import Graph, TensorSpec

# HF generate stops once every codebook but the last of the newest frame equals codebook_eos_token_id
# (`input_ids[:, -1, :-1] == eos`.all()); the stopping frame is still part of its output.
EOS_RULE = "all_but_last_codebook"
# HF's audio decoding cuts the frames at the first one whose K codes all equal codebook_eos_token_id.
AUDIO_CUTOFF_RULE = "before_first_all_codebooks_eos"


def _attention_mask(visible: torch.Tensor) -> torch.Tensor:
    """Additive attention mask (0 where visible, the float32 minimum elsewhere), as HF's eager path."""
    return torch.where(visible, 0.0, torch.finfo(torch.float32).min)


class RmsNorm(nn.Module):
    """A reference `CsmRMSNorm` (its weight shared) computed as `w * (x / sqrt(mean(x²) + eps))`: the pattern
    onnxruntime fuses into one `SimplifiedLayerNormalization`. The reference's `x * rsqrt(..)` exports as
    Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul: seven operators per norm, which nothing fuses."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps: float = norm.variance_epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class CachedLayer(nn.Module):
    """One `CsmDecoderLayer` (pre-norm attention + MLP) run against an explicit KV cache."""

    def __init__(self, layer: CsmDecoderLayer) -> None:
        super().__init__()
        self.layer = layer
        self.input_norm, self.post_norm = RmsNorm(layer.input_layernorm), RmsNorm(layer.post_attention_layernorm)
        attn = layer.self_attn
        self.head_dim: int = attn.head_dim
        self.groups: int = attn.num_key_value_groups
        self.scaling: float = attn.scaling

    def prefill(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, capacity: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (1, T, D) at positions 0..T-1 -> (x, keys, values) with `capacity` slots, 0..T-1 filled."""
        q, k, v = self._qkv(x, cos, sin)
        x = self._finish(x, self._attend(q, k, v, mask))
        pad = (0, 0, 0, capacity - k.shape[2])
        return x, nn.functional.pad(k, pad), nn.functional.pad(v, pad)

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (1, 1, D) against the cache as it was before this step; `mask` (1, 1, 1, C) additive, visible below
        this position. Returns x and this step's keys and values (1, H_kv, 1, hd), which the caller writes."""
        q, k, v = self._qkv(x, cos, sin)
        return self._finish(x, self._attend_step(q, k_cache, v_cache, k, v, mask)), k, v

    def _attend_step(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """One query position: the cache slots and this step's own key, without repeating kv heads in memory.

        q (1, H, 1, hd) is viewed as (1, H_kv, groups, hd) (query head h uses kv head h // groups, as
        `_repeat_heads` lays them out), so each kv head is read once; -> (1, 1, H * hd).
        """
        b, h, _, d = q.shape
        q = q.reshape(b, k_cache.shape[1], self.groups, d)
        cached = torch.matmul(q, k_cache.transpose(2, 3)) * self.scaling + mask  # (1, H_kv, groups, C)
        own = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # (1, H_kv, groups, 1)
        p = torch.softmax(torch.cat([cached, own], dim=-1), dim=-1)
        out = torch.matmul(p[..., :-1], v_cache) + p[..., -1:] * v  # (1, H_kv, groups, hd)
        return out.reshape(b, 1, h * d)

    def _qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = self.layer.self_attn
        h = self.input_norm(x)
        shape = (h.shape[0], h.shape[1], -1, self.head_dim)
        q = attn.q_proj(h).view(shape).transpose(1, 2)
        k = attn.k_proj(h).view(shape).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (1, H, T, hd), k/v (1, H_kv, S, hd), mask additive (.., T, S) -> (1, T, H * hd)."""
        k, v = _repeat_heads(k, self.groups), _repeat_heads(v, self.groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def _finish(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        x = x + self.layer.self_attn.o_proj(attn_out)
        return x + self.layer.mlp(self.post_norm(x))


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(1, H_kv, S, hd) -> (1, H_kv * groups, S, hd), each kv head serving `groups` query heads in a row."""
    b, h, s, d = x.shape
    return x.unsqueeze(2).expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


class _Stack(nn.Module):
    """A stack of `CachedLayer`s stepped one position at a time over a (L, 2, 1, H_kv, C, hd) cache.

    Every layer attends to the cache as it came in plus its own new key and value; the step returns the new
    keys and values of all layers, (L, 2, 1, H_kv, 1, hd), for the runtime to write at `position`. (Writing
    them in the graph copied the whole cache on every step: a `where` per layer at first, then one `scatter`,
    0.44 ms of csm-medium's int8 step for its 4 MB cache.)
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CachedLayer(layer) for layer in layers)

    def step(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (x, this step's keys and values (L, 2, 1, H_kv, 1, hd), the slot they go to (1,))."""
        capacity = kv.shape[4]
        slots = torch.arange(capacity, device=position.device)
        mask = _attention_mask(slots < position).view(1, 1, 1, capacity)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.step(x, cos, sin, kv[i, 0], kv[i, 1], mask)
            new_kv.append(torch.stack([k, v]))  # (2, 1, H_kv, 1, hd)
        # The slot is the position; returned as a new tensor, not the input itself (an output that is an input
        # is not an operator's result in every exporter).
        return x, torch.stack(new_kv), position.clone()


class LmPrefill(_Stack):
    """Backbone over a right-padded text prompt: (tokens (1, P), length (1,)) -> (logits, hidden, kv)."""

    def __init__(self, model: CsmForConditionalGeneration, kv_capacity: int) -> None:
        super().__init__(model.backbone_model.layers)
        self.embed_text = model.embed_text_tokens
        self.rotary = model.backbone_model.rotary_emb
        self.norm = RmsNorm(model.backbone_model.norm)
        self.lm_head = model.lm_head
        self.kv_capacity = kv_capacity

    def forward(
        self, tokens: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed_text(tokens)
        n = tokens.shape[1]
        positions = torch.arange(n, device=tokens.device)
        cos, sin = self.rotary(x, positions.unsqueeze(0))
        mask = _attention_mask(positions.unsqueeze(0) <= positions.unsqueeze(1))  # (P, P) causal
        kv = []
        for layer in self.layers:
            x, k, v = layer.prefill(x, cos, sin, mask, self.kv_capacity)
            kv.append(torch.stack([k, v]))
        last = x.index_select(1, length - 1).squeeze(1)  # (1, D) at the last real token
        hidden = self.norm(last)
        return self.lm_head(hidden), hidden, torch.stack(kv)


class LmStep(_Stack):
    """Backbone over one audio frame: (codes (1, K), position (1,), kv) -> (logits, hidden, slots, new kv)."""

    def __init__(self, model: CsmForConditionalGeneration) -> None:
        super().__init__(model.backbone_model.layers)
        self.embed_codes = model.backbone_model.embed_tokens  # sums the K codebook embeddings (with offsets)
        self.rotary = model.backbone_model.rotary_emb
        self.norm = RmsNorm(model.backbone_model.norm)
        self.lm_head = model.lm_head

    def forward(
        self, codes: torch.Tensor, position: torch.Tensor, kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed_codes(codes.unsqueeze(1))  # (1, 1, D)
        cos, sin = self.rotary(x, position.view(1, 1))
        x, new_kv, slots = self.step(x, cos, sin, kv, position)
        hidden = self.norm(x).squeeze(1)
        return self.lm_head(hidden), hidden, slots, new_kv


class CodebookHeads(nn.Module):
    """The depth decoder's heads, head i (hidden, V) predicting codebook i+1, applied one at a time.

    As an embedding with one flattened head per row (a view of the reference weight, not a copy), a step reads
    just its head, and the quantizers treat the heads as the lookup table they are: grouped along the flattened
    row, which V (2051 in CSM) alone cannot be. (ExecuTorch's quantized recipes swap this module for one linear
    over all heads: see `edge.quantize.executorch`.)
    """

    def __init__(self, weight: torch.Tensor) -> None:  # (K - 1, hidden, V)
        super().__init__()
        self.shape = tuple(weight.shape[1:])
        self.table = nn.Embedding.from_pretrained(weight.detach().flatten(1), freeze=True)

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """x (1, 1, hidden), codebook (1,) → that codebook head's logits (1, V)."""
        return torch.matmul(x, self.table(codebook).view(self.shape)).squeeze(1)


class DepthStep(_Stack):
    """Depth decoder, one codebook position: (hidden (1, D), code (1,), position (1,), depth_kv) -> (logits,
    slots, new depth_kv).

    Position 0 takes the backbone hidden (`code` ignored) and returns zero logits; position p >= 1 takes
    codebook p-1's code and returns codebook p's logits.
    """

    def __init__(self, model: CsmForConditionalGeneration) -> None:
        depth = model.depth_decoder
        super().__init__(depth.model.layers)
        self.embed_codes = depth.model.embed_tokens
        self.project = depth.model.inputs_embeds_projector
        self.rotary = depth.model.rotary_emb
        self.norm = RmsNorm(depth.model.norm)
        self.heads = CodebookHeads(depth.codebooks_head.weight)
        self.vocab_size: int = depth.config.vocab_size

    def forward(
        self, hidden: torch.Tensor, code: torch.Tensor, position: torch.Tensor, depth_kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codebook = torch.clamp(position - 1, min=0)
        embedded = self.embed_codes(code + codebook * self.vocab_size)  # (1, D)
        x = torch.where(position.unsqueeze(1) == 0, hidden, embedded)
        x = self.project(x).unsqueeze(1)  # (1, 1, depth hidden)
        cos, sin = self.rotary(x, position.view(1, 1))
        x, new_kv, slots = self.step(x, cos, sin, depth_kv, position)
        x = self.norm(x)  # (1, 1, depth hidden)
        logits = self.heads(x, codebook)  # (1, V)
        logits = torch.where(position.unsqueeze(1) > 0, logits, 0.0)
        return logits, slots, new_kv


def _kv_spec(name: str, layers: int, kv_heads: int, capacity: int, head_dim: int, written: bool) -> TensorSpec:
    """A KV cache; as a step's state, written: new entries along the capacity axis (4) at output ``slots``."""
    return TensorSpec(name, (layers, 2, 1, kv_heads, capacity, head_dim), write=(4, "slots") if written else None)


def lm_graphs(model: CsmForConditionalGeneration, prompt_capacity: int, kv_capacity: int) -> list[Graph]:
    """The graphs `lm_prefill`, `lm_step` and `depth_step` of `model` (eval mode, float32)."""
    if kv_capacity < prompt_capacity:
        raise ValueError(f"kv_capacity ({kv_capacity}) must be at least prompt_capacity ({prompt_capacity})")
    cfg, dcfg = model.config, model.config.depth_decoder_config
    k, v, d = cfg.num_codebooks, cfg.vocab_size, cfg.hidden_size
    kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, kv_capacity, cfg.head_dim)
    kv, kv_state = _kv_spec("kv", *kv_shape, written=False), _kv_spec("kv", *kv_shape, written=True)
    depth_kv = _kv_spec("depth_kv", dcfg.num_hidden_layers, dcfg.num_key_value_heads, k, dcfg.head_dim, written=True)
    logits, hidden = TensorSpec("logits", (1, v)), TensorSpec("hidden", (1, d))
    slots = TensorSpec("slots", (1,), "int64")
    prompt = torch.full((1, prompt_capacity), cfg.pad_token_id, dtype=torch.long)
    prompt[0, :4] = cfg.bos_token_id
    return [
        Graph(
            "lm_prefill",
            LmPrefill(model, kv_capacity).eval(),
            inputs=[TensorSpec("tokens", (1, prompt_capacity), "int64"), TensorSpec("length", (1,), "int64")],
            outputs=[logits, hidden, kv],
            example_inputs=(prompt, torch.tensor([4])),
        ),
        Graph(
            "lm_step",
            LmStep(model).eval(),
            inputs=[TensorSpec("codes", (1, k), "int64"), TensorSpec("position", (1,), "int64")],
            outputs=[logits, hidden, slots],
            state=[kv_state],
            example_inputs=(torch.ones(1, k, dtype=torch.long), torch.tensor([4])),
        ),
        Graph(
            "depth_step",
            DepthStep(model).eval(),
            inputs=[hidden, TensorSpec("code", (1,), "int64"), TensorSpec("position", (1,), "int64")],
            outputs=[logits, slots],
            state=[depth_kv],
            example_inputs=(torch.randn(1, d), torch.tensor([1]), torch.tensor([1])),
        ),
    ]


def lm_manifest(model: CsmForConditionalGeneration, prompt_capacity: int, kv_capacity: int) -> dict[str, Any]:
    """What a runtime loop needs to drive the LM graphs (the manifest's model section, LM part)."""
    cfg = model.config
    return {
        "loop": "depth",  # edge.runtime.frames.depth: backbone step, then the depth transformer per codebook
        "num_codebooks": cfg.num_codebooks,
        "audio_vocab_size": cfg.vocab_size,
        "codebook_eos_token_id": cfg.codebook_eos_token_id,
        "codebook_pad_token_id": cfg.codebook_pad_token_id,
        "text_tokens": {
            "bos": cfg.bos_token_id,
            "eos": cfg.eos_token_id,
            "pad": cfg.pad_token_id,
            "audio": cfg.audio_token_id,
            "audio_eos": cfg.audio_eos_token_id,
        },
        "prompt_capacity": prompt_capacity,
        "kv_capacity": kv_capacity,
        # A frame ends speech when codes[:K-1] all equal eos_token (the last codebook is not checked);
        # that frame is still emitted, as HF generate returns it.
        "end_of_speech": {"eos_token": cfg.codebook_eos_token_id, "eos_rule": EOS_RULE},
        # HF's `generate(output_audio=True)` decodes the frames before the first one whose codes are *all*
        # eos_token (a different test from the stopping rule: a stopping frame whose last code is not eos
        # is decoded too).
        "audio_cutoff_rule": AUDIO_CUTOFF_RULE,
        # lm_step's `kv` state starts from lm_prefill's `kv` output.
        "state_from": {"lm_step": {"kv": "lm_prefill"}},
    }
