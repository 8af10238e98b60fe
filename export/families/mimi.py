"""Kyutai Mimi (transformers' `MimiModel`) as truly streaming graphs with explicit state.

``codec_encoder`` turns ``F`` frames of audio into ``F`` frames of ``K`` codes, ``codec_decoder`` the
reverse, one call at a time, and each matches the reference run over the whole sequence at once:

- every causal convolution carries the last input samples it still needs (`StreamingConv1d`) and every
  transposed convolution the overlapping tail of its output (`StreamingConvTranspose1d`);
- the sliding-window transformers keep their keys and values in a ring buffer of ``sliding_window``
  slots (written states: a call returns only its new slots) and their absolute position in a state
  tensor (`StreamingTransformer`).

All modules wrap the reference model's submodules, so the weights are shared, not copied; only the
codebook tables (which the reference derives from its buffers and caches) are precomputed. States are
fixed-shape tensors starting from zeros; the graph contract is in `edge.export.graph`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers import MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiLayerScale,
    MimiResnetBlock,
    MimiSplitResidualVectorQuantizer,
    MimiTransformerLayer,
    MimiTransformerModel,
    apply_rotary_pos_emb,
)

from edge.errors import EdgeError
from edge.export.families.checkpoint import load_pretrained
from edge.export.graph import Graph, TensorSpec

Shape = tuple[int, ...]
States = list[torch.Tensor]


class StreamingModule(nn.Module):
    """A module run chunk by chunk: `forward(x, state) -> (y, new_state)`, state a list of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.state_shapes: list[Shape] = []


# Convolutions with at least this many weights run as a `MatMul` against a constant weight (below). Mimi's
# largest ones see a handful of steps per call, so reading the weights dominates: as a MatMul the int8
# recipe stores and reads them as 8-bit `MatMulNBits`, where onnxruntime keeps `Conv` fp32 (its ConvInteger
# is slower) and ran the 8M-weight `ConvTranspose` at about 1 GMAC/s. Smaller ones, which see hundreds of
# steps, stay `Conv` / `ConvTranspose`: there the MatMul form only adds layout copies.
MATMUL_MIN_WEIGHTS = 2**20


class StreamingConv1d(StreamingModule):
    """A causal `MimiConv1d` (strided or dilated) fed chunks whose length is a multiple of its stride.

    State: the last ``(kernel - 1) * dilation + 1 - stride`` input samples (none for 1x1 convs). The
    reference left-pads the whole sequence with zeros, or with copies of its first sample when
    ``pad_mode == "replicate"``; for the latter, pass ``first`` (a bool tensor, true on the first call).
    A large dense conv (`MATMUL_MIN_WEIGHTS`) runs as one MatMul of its unfolded input.
    """

    def __init__(self, conv: MimiConv1d) -> None:
        super().__init__()
        if not conv.causal:
            raise ValueError("streaming needs causal convolutions (config.use_causal_conv=True)")
        if conv.pad_mode not in ("constant", "replicate"):
            raise ValueError(f"unsupported Mimi conv pad_mode '{conv.pad_mode}'")
        c = conv.conv
        self.stride: int = c.stride[0]
        self.kernel: int = c.kernel_size[0]
        self.dilation: int = c.dilation[0]
        self.context: int = (self.kernel - 1) * self.dilation + 1 - self.stride
        self.replicate = conv.pad_mode == "replicate"
        if self.context > 0:
            self.state_shapes = [(1, c.in_channels, self.context)]
        self.matmul = c.groups == 1 and c.weight.numel() >= MATMUL_MIN_WEIGHTS
        if self.matmul:  # (out, kernel * in): column k * in + i holds tap k of input channel i
            w = c.weight.detach().permute(0, 2, 1).reshape(c.out_channels, -1)
            self.register_buffer("weight", w.contiguous(), persistent=False)
            self.bias = c.bias
        else:
            self.conv = c

    def forward(
        self, x: torch.Tensor, state: States, first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, States]:
        new_state: States = []
        if self.context > 0:
            (tail,) = state
            if self.replicate:
                if first is None:
                    raise ValueError("a replicate-padded conv needs `first`")
                tail = torch.where(first.reshape(1, 1, 1), x[..., :1].expand_as(tail), tail)
            x = torch.cat([tail, x], dim=-1)
            new_state = [x[..., -self.context :]]
        if not self.matmul:
            return self.conv(x), new_state
        steps = (x.shape[-1] - self.dilation * (self.kernel - 1) - 1) // self.stride + 1
        taps = [
            x[0, :, k * self.dilation : k * self.dilation + (steps - 1) * self.stride + 1 : self.stride]
            for k in range(self.kernel)
        ]  # each (in, steps)
        # A linear layer (not `@`), so that ExecuTorch's XNNPACK partitioner takes it as one.
        y = F.linear(torch.cat(taps, dim=0).transpose(0, 1), self.weight, self.bias)  # (steps, out)
        return y.transpose(0, 1)[None], new_state


class StreamingConvTranspose1d(StreamingModule):
    """A causal `MimiConvTranspose1d` (also grouped, as Mimi's upsampling) fed chunk by chunk.

    A large dense one (`MATMUL_MIN_WEIGHTS`) runs as one MatMul per input step against a constant weight
    and an overlap-add of the ``kernel / stride`` output frames each step spans (the kernel zero-padded to a
    multiple of the stride); a depthwise one (Mimi's upsampling: onnxruntime's grouped `ConvTranspose`
    loops over the groups) as an elementwise product and the same overlap-add. State: the
    ``kernel - stride`` output samples that overlap the next chunk, without bias.
    """

    def __init__(self, conv: MimiConvTranspose1d) -> None:
        super().__init__()
        if not (conv.causal and conv.trim_right_ratio == 1.0):
            raise ValueError("streaming needs causal transposed convs with trim_right_ratio=1.0")
        c = conv.conv
        self.stride: int = c.stride[0]
        self.channels: int = c.out_channels
        self.depthwise = c.groups == c.in_channels == c.out_channels > 1 and c.dilation[0] == 1
        self.matmul = c.groups == 1 and c.dilation[0] == 1 and c.weight.numel() >= MATMUL_MIN_WEIGHTS
        self.spans = -(-c.kernel_size[0] // self.stride) if self.depthwise or self.matmul else 0
        self.context: int = (
            (self.spans - 1) * self.stride if self.spans else c.kernel_size[0] - self.stride
        )
        if self.spans:
            w = F.pad(c.weight.detach(), (0, self.spans * self.stride - c.kernel_size[0]))  # (in, out/groups, K)
            # Depthwise (channels, K); dense (out * K, in), so that step t's product is (out, K) row-major.
            self.register_buffer("weight", w[:, 0] if self.depthwise else w.reshape(w.shape[0], -1).T.contiguous(),
                                 persistent=False)
        else:
            self.conv = c
        self.bias = c.bias
        if self.context > 0:
            self.state_shapes = [(1, self.channels, self.context)]

    def forward(self, x: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        if self.spans:
            y, new_state = self._overlap_add(x, state)
        else:
            c = self.conv
            y = F.conv_transpose1d(x, c.weight, None, c.stride, 0, 0, c.groups, c.dilation)
            n = x.shape[-1] * self.stride
            new_state = []
            if self.context > 0:
                (tail,) = state
                y = torch.cat([y[..., : self.context] + tail, y[..., self.context :]], dim=-1)
                new_state = [y[..., n:]]
            y = y[..., :n]
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y, new_state

    def _overlap_add(self, x: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        t, s, c, spans = x.shape[-1], self.stride, self.channels, self.spans
        if self.depthwise:
            z = x[0, :, :, None] * self.weight[:, None, :]  # (C, T, K)
        else:
            z = F.linear(x[0].transpose(0, 1), self.weight).view(t, c, -1).transpose(0, 1)  # (C, T, K)
        # Output frame f (s samples) sums span j of step f - j; the last spans - 1 frames overlap the next
        # chunk and come back as state.
        acc = F.pad(z[..., :s], (0, 0, 0, spans - 1))
        for j in range(1, spans):
            acc = acc + F.pad(z[..., j * s : (j + 1) * s], (0, 0, j, spans - 1 - j))
        new_state: States = []
        if self.context > 0:
            (tail,) = state
            acc = acc + F.pad(tail[0].view(c, spans - 1, s), (0, 0, 0, t))
            new_state = [acc[:, t:].reshape(1, c, self.context)]
        return acc[:, :t].reshape(1, c, t * s), new_state


class StreamingChain(StreamingModule):
    """A sequence of layers (SEANet encoder/decoder, a residual branch) with their states in order."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([streaming(layer) for layer in layers])
        self.state_shapes = [
            s for layer in self.layers if isinstance(layer, StreamingModule) for s in layer.state_shapes
        ]

    def forward(self, x: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        new_state: States = []
        for layer in self.layers:
            if isinstance(layer, StreamingModule):
                n = len(layer.state_shapes)
                x, s = layer(x, state[len(new_state) : len(new_state) + n])
                new_state += s
            else:
                x = layer(x)
        return x, new_state


class StreamingResnetBlock(StreamingModule):
    """`MimiResnetBlock`: ELU/conv residual branch plus (1x1 conv or identity) shortcut."""

    def __init__(self, block: MimiResnetBlock) -> None:
        super().__init__()
        self.branch = StreamingChain(block.block)
        self.shortcut = streaming(block.shortcut)
        self.state_shapes = self.branch.state_shapes + getattr(self.shortcut, "state_shapes", [])

    def forward(self, x: torch.Tensor, state: States) -> tuple[torch.Tensor, States]:
        n = len(self.branch.state_shapes)
        y, new_state = self.branch(x, state[:n])
        if isinstance(self.shortcut, StreamingModule):
            x, s = self.shortcut(x, state[n:])
            new_state += s
        else:
            x = self.shortcut(x)
        return x + y, new_state


def streaming(layer: nn.Module) -> nn.Module:
    """The streaming counterpart of a SEANet layer (stateless layers such as ELU are returned as is)."""
    if isinstance(layer, MimiConv1d):
        return StreamingConv1d(layer)
    if isinstance(layer, MimiConvTranspose1d):
        return StreamingConvTranspose1d(layer)
    if isinstance(layer, MimiResnetBlock):
        return StreamingResnetBlock(layer)
    return layer


class StreamingTransformer(nn.Module):
    """`MimiTransformerModel` run on T new steps at a time with a ring-buffer KV cache.

    As the reference's sliding-window mask (``q - window < k <= q``), step ``q`` sees itself and the
    ``window - 1`` steps before it. Each layer's keys (after RoPE) and values are two state tensors of
    ``window`` slots, keys shaped (kv_heads, head_dim, window) (transposed, as the scores need them) and
    values (kv_heads, window, head_dim), in `kv_names` order; step ``p`` goes to slot ``p % window``.
    Slots not yet written or out of the window are masked by position, so the cache starts as zeros.
    One tensor per layer and kind, attention against the cache and against the new steps taken
    separately. The caches are written states (`edge.runtime.state`): a call returns only this call's keys
    and values and the slots they go to, and the runtime writes them in place, so a call reads each cache
    once and copies none (returning whole caches, written by a scatter, copied the real decoder's 16 MB of
    caches on every frame).
    """

    def __init__(self, model: MimiTransformerModel) -> None:
        super().__init__()
        config = model.config
        if config.rope_parameters["rope_type"] != "default":
            raise ValueError(f"unsupported Mimi rope_type '{config.rope_parameters['rope_type']}'")
        self.layers: nn.ModuleList = model.layers
        self.rotary = model.rotary_emb
        self.window: int = config.sliding_window
        attn = model.layers[0].self_attn
        self.heads: int = attn.num_heads
        self.kv_heads: int = attn.num_key_value_heads
        self.head_dim: int = attn.head_dim
        self.kv_names: list[str] = [f"{kind}{i}" for i in range(len(self.layers)) for kind in "kv"]
        self.kv_shapes: list[Shape] = [(self.kv_heads, self.head_dim, self.window),
                                       (self.kv_heads, self.window, self.head_dim)] * len(self.layers)

    def kv_specs(self, prefix: str, slots: str) -> list[TensorSpec]:
        """The caches as written states: keys take new entries along axis 2, values along axis 1, at `slots`."""
        return [TensorSpec(f"{prefix}{n}", shape, write=(2 if n[0] == "k" else 1, slots))
                for n, shape in zip(self.kv_names, self.kv_shapes, strict=True)]

    def forward(
        self, x: torch.Tensor, kv: States, pos: torch.Tensor
    ) -> tuple[torch.Tensor, States, torch.Tensor, torch.Tensor]:
        """x (1, T, hidden) at positions pos..pos+T-1 (T <= window) -> (y, new entries, pos + T, slots): per
        cache in `kv_names` order, this call's keys (kv_heads, head_dim, T) or values (kv_heads, T, head_dim),
        which go to ring slots `slots` (T,)."""
        t, w = x.shape[1], self.window
        q_pos = pos + torch.arange(t)  # (T,)
        slots = torch.arange(w)
        # Every remainder below takes a non-negative left operand: ExecuTorch's kernel truncates toward
        # zero for negative ones (C fmod), unlike torch and ONNX.
        behind = torch.remainder(torch.remainder(pos + w - 1, w) - slots + w, w)  # == (pos - 1 - slot) mod w
        slot_pos = pos - 1 - behind  # latest position before `pos` held by each slot; < 0: empty
        cached = (slot_pos >= 0) & (slot_pos > q_pos[:, None] - w)  # (T, W)
        causal = torch.ones(t, t, dtype=torch.bool).tril()  # new steps: each sees itself and those before
        groups = self.heads // self.kv_heads
        mask = torch.cat([cached, causal], dim=-1).repeat(groups, 1)  # (groups * T, W + T), rows as queries

        freqs = q_pos.float()[:, None] * self.rotary.inv_freq[None, :].float()
        emb = torch.cat([freqs, freqs], dim=-1)[None]
        cos = (emb.cos() * self.rotary.attention_scaling).to(x.dtype)
        sin = (emb.sin() * self.rotary.attention_scaling).to(x.dtype)

        new_kv: States = []
        for i, layer in enumerate(self.layers):
            x, k, v = self._layer(layer, x, cos, sin, kv[2 * i], kv[2 * i + 1], mask)
            new_kv += [k, v]
        return x, new_kv, pos + t, torch.remainder(q_pos, w)

    def _layer(
        self,
        layer: MimiTransformerLayer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pre-norm layer; returns x and this call's keys (kv_heads, head_dim, T) and values
        (kv_heads, T, head_dim)."""
        attn = layer.self_attn
        t, w = x.shape[1], self.window
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(1, t, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k[0].transpose(1, 2), v[0]
        # Queries grouped by their kv head (kv_heads, groups * T, head_dim): nothing is repeated.
        q = q.reshape(self.kv_heads, -1, self.head_dim) * attn.scaling
        scores = torch.cat([q @ k_cache, q @ k], dim=-1)
        p = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        o = p[..., :w] @ v_cache + p[..., w:] @ v  # (kv_heads, groups * T, head_dim)
        o = attn.o_proj(o.reshape(1, self.heads, t, self.head_dim).transpose(1, 2).reshape(1, t, -1))
        x = x + layer.self_attn_layer_scale(o)
        x = x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        return x, k, v


class Quantizer(nn.Module):
    """Mimi's split residual VQ (semantic codebooks, then acoustic ones) for the first K codebooks.

    For encoding, one 2-D centroid table per codebook (`tables`); for decoding (``stacked``), one per group,
    its codebooks' tables stacked, so that a frame's codes are one gather and one sum per group: one table
    per codebook cost 32 gathers and adds on the real Mimi, and 11 nodes each once quantized.
    """

    def __init__(self, quantizer: MimiSplitResidualVectorQuantizer, num_codebooks: int, stacked: bool) -> None:
        super().__init__()
        n_sem = quantizer.num_semantic_quantizers
        rvqs = [quantizer.semantic_residual_vector_quantizer]
        self.counts = [min(num_codebooks, n_sem)]
        if num_codebooks > n_sem:
            rvqs.append(quantizer.acoustic_residual_vector_quantizer)
            self.counts.append(num_codebooks - n_sem)
        # Only what the graphs use is kept (the projections and the centroid tables), so that the
        # module's weights are exactly the exported ones.
        self.input_projs = nn.ModuleList([rvq.input_proj or nn.Identity() for rvq in rvqs])
        self.output_projs = nn.ModuleList([rvq.output_proj or nn.Identity() for rvq in rvqs])
        self.stacked = stacked
        for g, (rvq, n) in enumerate(zip(rvqs, self.counts, strict=True)):
            tables = []
            for layer in rvq.layers[:n]:
                # As MimiEuclideanCodebook.embed: centroids = embed_sum / clamped cluster usage.
                cb = layer.codebook
                tables.append((cb.embed_sum / cb.cluster_usage.clamp(min=cb.epsilon)[:, None]).detach().clone())
            if stacked:
                self.register_buffer(f"table{g}", torch.cat(tables), persistent=False)
                offsets = torch.arange(n) * tables[0].shape[0]  # where each codebook starts in the stack
                self.register_buffer(f"offsets{g}", offsets[:, None], persistent=False)
            else:
                for i, table in enumerate(tables):
                    self.register_buffer(f"table{g}_{i}", table, persistent=False)

    def tables(self, g: int) -> list[torch.Tensor]:
        return [getattr(self, f"table{g}_{i}") for i in range(self.counts[g])]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (1, K, T) int64 -> latents (1, hidden, T)."""
        out, first = None, 0
        for g, n in enumerate(self.counts):
            ids = codes[0, first : first + n] + getattr(self, f"offsets{g}")  # (n, T) rows of the stack
            q = F.embedding(ids, getattr(self, f"table{g}")).sum(dim=0)  # (T, D)
            q = self.output_projs[g](q.transpose(0, 1)[None])
            out = q if out is None else out + q
            first += n
        return out

    def encode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (1, hidden, T) -> codes (1, K, T) int64 (nearest centroid, residual by residual)."""
        codes = []
        for g, n in enumerate(self.counts):
            tables = self.tables(g)
            residual = self.input_projs[g](latents).transpose(1, 2)  # (1, T, D)
            for i in range(n):
                index = torch.cdist(residual, tables[i][None], p=2).argmin(dim=-1)  # (1, T)
                residual = residual - F.embedding(index, tables[i])
                codes.append(index)
        return torch.stack(codes, dim=1)


def _check(codec: MimiModel, num_codebooks: int, frames_per_call: int) -> None:
    config = codec.config
    if not 1 <= num_codebooks <= config.num_quantizers:
        raise EdgeError(
            f"num_codebooks must be 1..{config.num_quantizers} for this codec, got {num_codebooks}"
        )
    steps = frames_per_call * config.latent_stride
    if not 1 <= steps <= config.sliding_window:
        raise EdgeError(
            f"frames_per_call must be 1..{config.sliding_window // config.latent_stride} for this codec "
            f"(its transformer attends {config.sliding_window} steps), got {frames_per_call}"
        )


def samples_per_frame(config: MimiConfig) -> int:
    return math.prod(config.upsampling_ratios) * config.latent_stride


def _split(state: tuple[torch.Tensor, ...], sizes: list[int]) -> list[States]:
    out, i = [], 0
    for n in sizes:
        out.append(list(state[i : i + n]))
        i += n
    return out


class MimiDecoderGraph(nn.Module):
    """codes (1, K, F) -> audio (1, 1, F * samples_per_frame), streaming (graph ``codec_decoder``).

    Path: dequantize -> upsample (transposed conv) -> decoder transformer -> SEANet decoder.
    Outputs: ``audio``, then ``dec.slots``, the ring slots this call's keys and values go to. State, in
    order: ``dec.up``, ``dec.k{i}`` / ``dec.v{i}`` per transformer layer (written at ``dec.slots``),
    ``dec.pos``, then ``dec.conv{i}`` for each SEANet conv tail.
    """

    def __init__(self, codec: MimiModel, num_codebooks: int, frames_per_call: int = 1) -> None:
        super().__init__()
        _check(codec, num_codebooks, frames_per_call)
        self.quantizer = Quantizer(codec.quantizer, num_codebooks, stacked=True)
        self.upsample = (
            None if codec.decoder.upsample is None else StreamingConvTranspose1d(codec.decoder.upsample)
        )
        self.transformer = StreamingTransformer(codec.decoder.decoder_transformer)
        self.seanet = StreamingChain(codec.decoder.decoder_seanet.layers)

    def state_specs(self) -> list[TensorSpec]:
        up = [] if self.upsample is None else [TensorSpec("dec.up", self.upsample.state_shapes[0])]
        return [
            *up,
            *self.transformer.kv_specs("dec.", "dec.slots"),
            TensorSpec("dec.pos", (1,), "int64"),
            *(TensorSpec(f"dec.conv{i}", s) for i, s in enumerate(self.seanet.state_shapes)),
        ]

    def forward(self, codes: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_up = 0 if self.upsample is None else 1
        n_kv = len(self.transformer.kv_names)
        up, kv, (pos,), convs = _split(state, [n_up, n_kv, 1, len(self.seanet.state_shapes)])
        x = self.quantizer.decode(codes)
        if self.upsample is not None:
            x, up = self.upsample(x, up)
        x, kv, pos, slots = self.transformer(x.transpose(1, 2), kv, pos)
        audio, convs = self.seanet(x.transpose(1, 2), convs)
        return (audio, slots, *up, *kv, pos, *convs)


class MimiEncoderGraph(nn.Module):
    """audio (1, 1, F * samples_per_frame) -> codes (1, K, F) int64, streaming (graph ``codec_encoder``).

    Path: SEANet encoder -> encoder transformer -> downsample (strided conv) -> quantize.
    Outputs: ``codes``, then ``enc.slots`` (the ring slots of this call's keys and values). State, in order:
    ``enc.conv{i}`` for each SEANet conv tail, ``enc.k{i}`` / ``enc.v{i}`` per transformer layer (written at
    ``enc.slots``), ``enc.pos``, ``enc.down``.
    """

    def __init__(self, codec: MimiModel, num_codebooks: int, frames_per_call: int = 1) -> None:
        super().__init__()
        _check(codec, num_codebooks, frames_per_call)
        if num_codebooks < codec.config.num_semantic_quantizers:
            raise EdgeError(f"encoding needs at least {codec.config.num_semantic_quantizers} codebooks")
        self.seanet = StreamingChain(codec.encoder.encoder_seanet.layers)
        self.transformer = StreamingTransformer(codec.encoder.encoder_transformer)
        self.downsample = (
            None if codec.encoder.downsample is None else StreamingConv1d(codec.encoder.downsample)
        )
        self.quantizer = Quantizer(codec.quantizer, num_codebooks, stacked=False)

    def state_specs(self) -> list[TensorSpec]:
        down = (
            []
            if self.downsample is None
            else [TensorSpec("enc.down", s) for s in self.downsample.state_shapes]
        )
        return [
            *(TensorSpec(f"enc.conv{i}", s) for i, s in enumerate(self.seanet.state_shapes)),
            *self.transformer.kv_specs("enc.", "enc.slots"),
            TensorSpec("enc.pos", (1,), "int64"),
            *down,
        ]

    def forward(self, audio: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latents, *rest = self.latents(audio, *state)
        return (self.quantizer.encode(latents), *rest)

    def latents(self, audio: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """As `forward`, but returns the latents (1, hidden, F) before quantization."""
        n_down = 0 if self.downsample is None else len(self.downsample.state_shapes)
        n_kv = len(self.transformer.kv_names)
        convs, kv, (pos,), down = _split(state, [len(self.seanet.state_shapes), n_kv, 1, n_down])
        x, convs = self.seanet(audio, convs)
        y, kv, new_pos, slots = self.transformer(x.transpose(1, 2), kv, pos)
        latents = y.transpose(1, 2)
        if self.downsample is not None:
            # The reference pads the downsampling conv with copies of its first input ("replicate").
            latents, down = self.downsample(latents, down, first=pos == 0)
        return (latents, slots, *convs, *kv, new_pos, *down)


def codec_graphs(codec: MimiModel, num_codebooks: int, frames_per_call: int = 1) -> list[Graph]:
    """The streaming ``codec_encoder`` and ``codec_decoder`` graphs of a Mimi codec."""
    config = codec.config
    k, f = num_codebooks, frames_per_call
    n = samples_per_frame(config) * f
    steps = n // math.prod(config.upsampling_ratios)  # transformer steps per call
    graphs = []
    if codec.encoder is not None:
        enc = MimiEncoderGraph(codec, k, f).eval()
        graphs.append(
            Graph(
                "codec_encoder",
                enc,
                inputs=[TensorSpec("audio", (1, 1, n))],
                outputs=[TensorSpec("codes", (1, k, f), "int64"), TensorSpec("enc.slots", (steps,), "int64")],
                state=enc.state_specs(),
                example_inputs=(0.1 * torch.randn(1, 1, n),),
            )
        )
    if codec.decoder is not None:
        dec = MimiDecoderGraph(codec, k, f).eval()
        graphs.append(
            Graph(
                "codec_decoder",
                dec,
                inputs=[TensorSpec("codes", (1, k, f), "int64")],
                outputs=[TensorSpec("audio", (1, 1, n)), TensorSpec("dec.slots", (steps,), "int64")],
                state=dec.state_specs(),
                example_inputs=(torch.randint(0, config.codebook_size, (1, k, f)),),
            )
        )
    return graphs


def codec_manifest(codec: MimiModel, num_codebooks: int, frames_per_call: int = 1) -> dict[str, Any]:
    """What the runtime needs to drive the codec graphs."""
    config = codec.config
    return {
        "sample_rate": int(config.sampling_rate),
        "frame_rate": float(config.frame_rate),
        "samples_per_frame": samples_per_frame(config),
        "num_codebooks": num_codebooks,
        "codebook_size": int(config.codebook_size),
        "frames_per_call": frames_per_call,
    }


# --- the `mimi` family (a codec-only bundle) ---


def randomize(codec: MimiModel) -> MimiModel:
    """Make a randomly initialised Mimi exercise every path, as trained weights do.

    A fresh MimiModel has all-zero codebooks (every code decodes alike, every frame encodes to 0)
    and layer scales of 0.01 (its transformers barely matter); presets with random weights use this.
    """
    with torch.no_grad():
        for module in codec.modules():
            if hasattr(module, "embed_sum"):
                module.embed_sum.normal_()
                module.cluster_usage.uniform_(0.5, 1.5)
            if isinstance(module, MimiLayerScale):
                module.scale.fill_(1.0)
    return codec


def build_reference(config: dict[str, Any], seed: int) -> MimiModel:
    torch.manual_seed(seed)
    return randomize(MimiModel(MimiConfig(**config))).eval()


def load_reference(directory: Path) -> MimiModel:
    return load_pretrained(MimiModel, directory, "MimiModel")


def graphs(model: MimiModel, options: dict[str, Any]) -> tuple[list[Graph], dict[str, Any]]:
    k = options.get("num_codebooks", model.config.num_quantizers)
    f = options.get("frames_per_call", 1)
    manifest = {**codec_manifest(model, k, f), "export_options": {"num_codebooks": k, "frames_per_call": f}}
    return codec_graphs(model, k, f), manifest


def tokenizer(model: MimiModel, checkpoint: Path | None, writer) -> dict[str, Any]:
    return {"kind": "none"}
