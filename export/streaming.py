"""Streaming layers: convolutions, chains of them and sliding-window attention run chunk by chunk, with their
state explicit (see `edge.export.graph`), each matching the layer run over the whole sequence at once.

- every causal convolution carries the last input samples it still needs (`StreamingConv1d`) and every
  transposed convolution the overlapping tail of its output (`StreamingConvTranspose1d`);
- `StreamingChain` and `StreamingResidual` thread the states of a stack of them (a SEANet encoder/decoder);
- a sliding-window transformer keeps its keys and values in a ring buffer of ``sliding_window`` slots
  (written states: a call returns only its new slots) and its absolute position in a state tensor
  (`StreamingTransformer`).

A codec family adapter (`families/mimi.py`) maps its model's layers onto these and keeps the weights where
they are (shared, not copied). States are fixed-shape tensors starting from zeros.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers.models.mimi.modeling_mimi import MimiTransformerLayer, MimiTransformerModel, apply_rotary_pos_emb

from edge.export.graph import TensorSpec

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
    """A causal `nn.Conv1d` (strided or dilated) fed chunks whose length is a multiple of its stride.

    State: the last ``(kernel - 1) * dilation + 1 - stride`` input samples (none for 1x1 convs). The
    whole-sequence conv it streams left-pads the sequence with zeros, or with copies of its first sample
    (``replicate``); for the latter, pass ``first`` (a bool tensor, true on the first call).
    A large dense conv (`MATMUL_MIN_WEIGHTS`) runs as one MatMul of its unfolded input.
    """

    def __init__(self, c: nn.Conv1d, replicate: bool = False) -> None:
        super().__init__()
        self.stride: int = c.stride[0]
        self.kernel: int = c.kernel_size[0]
        self.dilation: int = c.dilation[0]
        self.context: int = (self.kernel - 1) * self.dilation + 1 - self.stride
        self.replicate = replicate
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
    """A causal `nn.ConvTranspose1d` (its output trimmed on the right only; also grouped) fed chunk by chunk.

    A large dense one (`MATMUL_MIN_WEIGHTS`) runs as one MatMul per input step against a constant weight
    and an overlap-add of the ``kernel / stride`` output frames each step spans (the kernel zero-padded to a
    multiple of the stride); a depthwise one (Mimi's upsampling: onnxruntime's grouped `ConvTranspose`
    loops over the groups) as an elementwise product and the same overlap-add. State: the
    ``kernel - stride`` output samples that overlap the next chunk, without bias.
    """

    def __init__(self, c: nn.ConvTranspose1d) -> None:
        super().__init__()
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
    """A sequence of layers (a SEANet encoder or decoder, a residual branch) with their states in order; the
    stateless ones (activations) run as they are."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
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


class StreamingResidual(StreamingModule):
    """A residual block: `branch` (a chain) plus `shortcut` (a streaming 1x1 conv, or a stateless module)."""

    def __init__(self, branch: StreamingChain, shortcut: nn.Module) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
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


class StreamingTransformer(nn.Module):
    """A sliding-window transformer (transformers' `MimiTransformerModel`: pre-norm layers with RoPE and layer
    scales) run on T new steps at a time with a ring-buffer KV cache.

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


def split_state(state: tuple[torch.Tensor, ...], sizes: list[int]) -> list[States]:
    """`state` cut into consecutive groups of `sizes` tensors (a graph's flat state, per submodule)."""
    out, i = [], 0
    for n in sizes:
        out.append(list(state[i : i + n]))
        i += n
    return out
