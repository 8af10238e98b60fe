"""Kyutai Mimi (transformers' `MimiModel`) as truly streaming graphs with explicit state: the Mimi adapter.

``codec_encoder`` turns ``F`` frames of audio into ``F`` frames of ``K`` codes, ``codec_decoder`` the
reverse, one call at a time, and each matches the reference run over the whole sequence at once. The
streaming layers themselves (convolutions with carried tails, the ring-buffer transformer) are in
`edge.export.streaming`; here Mimi's layers are mapped onto them (`streaming`, `seanet`), its split residual
VQ becomes fixed codebook tables (`Quantizer`), and the two graphs and the `mimi` family are defined.

All modules wrap the reference model's submodules, so the weights are shared, not copied; only the
codebook tables (which the reference derives from its buffers and caches) are precomputed. The graph
contract is in `edge.export.graph`.
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
)

from edge.errors import EdgeError
from edge.export.families.checkpoint import load_pretrained
from edge.export.graph import Graph, TensorSpec
from edge.export.streaming import (
    StreamingChain,
    StreamingConv1d,
    StreamingConvTranspose1d,
    StreamingResidual,
    StreamingTransformer,
    split_state,
)


def streaming(layer: nn.Module) -> nn.Module:
    """The streaming counterpart of a Mimi SEANet layer (stateless layers such as ELU are returned as is)."""
    if isinstance(layer, MimiConv1d):
        if not layer.causal:
            raise ValueError("streaming needs causal convolutions (config.use_causal_conv=True)")
        if layer.pad_mode not in ("constant", "replicate"):
            raise ValueError(f"unsupported Mimi conv pad_mode '{layer.pad_mode}'")
        return StreamingConv1d(layer.conv, replicate=layer.pad_mode == "replicate")
    if isinstance(layer, MimiConvTranspose1d):
        if not (layer.causal and layer.trim_right_ratio == 1.0):
            raise ValueError("streaming needs causal transposed convs with trim_right_ratio=1.0")
        return StreamingConvTranspose1d(layer.conv)
    if isinstance(layer, MimiResnetBlock):
        return StreamingResidual(seanet(layer.block), streaming(layer.shortcut))
    return layer


def seanet(layers: Iterable[nn.Module]) -> StreamingChain:
    """A SEANet stack (encoder, decoder, residual branch) as one streaming chain."""
    return StreamingChain(streaming(layer) for layer in layers)


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
            None if codec.decoder.upsample is None else streaming(codec.decoder.upsample)
        )
        self.transformer = StreamingTransformer(codec.decoder.decoder_transformer)
        self.seanet = seanet(codec.decoder.decoder_seanet.layers)

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
        up, kv, (pos,), convs = split_state(state, [n_up, n_kv, 1, len(self.seanet.state_shapes)])
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
        self.seanet = seanet(codec.encoder.encoder_seanet.layers)
        self.transformer = StreamingTransformer(codec.encoder.encoder_transformer)
        self.downsample = (
            None if codec.encoder.downsample is None else streaming(codec.encoder.downsample)
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
        convs, kv, (pos,), down = split_state(state, [len(self.seanet.state_shapes), n_kv, 1, n_down])
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
