"""ExecuTorch quantization: graph module (rebuilt from the bundle's reference) → quantized → XNNPACK `.pte`.

- ``fp16``: the module runs in half precision (weights and activations) inside an fp32-in/fp32-out
  wrapper, lowered to XNNPACK's fp16 kernels.
- ``int8``: torchao's PT2E flow with ExecuTorch's `XNNPACKQuantizer`, dynamic per-token int8 activations
  and per-channel symmetric int8 weights for every linear (and conv) it annotates; embeddings become
  per-row int8 tables (see `tables.py`); the depth decoder's codebook heads become one linear (`_AllHeads`).
- ``int4``: torchao `Int8DynamicActivationIntxWeightConfig` (8-bit dynamic activations, group-wise
  symmetric int4 weights, "8da4w") on every `nn.Linear` whose input size the group divides, lowered to
  XNNPACK; embeddings become group-wise int4 tables.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edge.export.executorch import export_executorch
from edge.export.families.csm_lm import CodebookHeads
from edge.export.graph import Graph
from edge.quantize.tables import INT8_GROUP, quantize_table

log = logging.getLogger(__name__)


class QuantEmbedding(nn.Module):
    """Drop-in for `nn.Embedding` over a quantized table; dequantizes only the rows it reads."""

    def __init__(self, weight: torch.Tensor, bits: int, group: int) -> None:
        super().__init__()
        table = quantize_table(weight.detach().float().numpy(), bits, group)
        self.bits, self.group = bits, table.group
        self.num_embeddings, self.embedding_dim = table.shape
        self.register_buffer("data", torch.from_numpy(table.data))
        self.register_buffer("scales", torch.from_numpy(table.scales))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = torch.index_select(self.data, 0, flat)
        if self.bits == 4:
            rows = rows.to(torch.int32)
            hi = torch.div(rows, 16, rounding_mode="floor")
            lo = rows - hi * 16
            rows = torch.stack([lo, hi], dim=-1).reshape(flat.shape[0], self.embedding_dim) - 8
        # int8 rows go to float in one cast: these ops run in ExecuTorch's portable kernels, where a detour
        # through int32 made dequantizing a 1M-entry row 4x slower.
        scales = torch.index_select(self.scales, 0, flat).to(torch.float32)
        blocks = rows.to(torch.float32).reshape(flat.shape[0], self.embedding_dim // self.group, self.group)
        out = (blocks * scales.unsqueeze(-1)).reshape(flat.shape[0], self.embedding_dim)
        return out.reshape(*ids.shape, self.embedding_dim)


class _AllHeads(nn.Module):
    """`CodebookHeads` as one linear over every head, the asked head's logits then picked out.

    The linear is a constant weight, so XNNPACK runs it with int8 or int4 weights. Gathering the one head a
    step needs and dequantizing it is 1M entries per step on csm-medium, and those ops run in ExecuTorch's
    portable kernels: 13 ms, against about 1.4 ms to read all 31 heads at int8.
    """

    def __init__(self, heads: CodebookHeads) -> None:
        super().__init__()
        hidden, self.vocab = heads.shape
        self.count = heads.table.num_embeddings
        weight = heads.table.weight.detach().view(self.count, hidden, self.vocab).transpose(1, 2)
        self.linear = nn.Linear(hidden, self.count * self.vocab, bias=False)
        self.linear.weight = nn.Parameter(weight.reshape(-1, hidden).contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(self.count, self.vocab).index_select(0, codebook)  # (1, V)


def _replace_modules(module: nn.Module, kind: type[nn.Module], make: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Swap every `kind` submodule of `module` for `make(it)`; the swapped modules' names."""
    names = []
    for name, child in list(module.named_modules()):
        if isinstance(child, kind):
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, make(child))
            names.append(name)
    return names


def _replace_embeddings(module: nn.Module, bits: int, group: int, notes: list[str]) -> None:
    made: list[QuantEmbedding] = []

    def make(embedding: nn.Module) -> QuantEmbedding:
        made.append(QuantEmbedding(embedding.weight, bits, group))
        return made[-1]

    names = _replace_modules(module, nn.Embedding, make)
    notes.extend(f"{name}: int{bits} table, group {q.group}" for name, q in zip(names, made, strict=True))


def _replace_heads(module: nn.Module, notes: list[str]) -> None:
    names = _replace_modules(module, CodebookHeads, _AllHeads)
    notes.extend(f"{name}: one linear over all codebook heads (XNNPACK, quantized weights)" for name in names)


class _HalfLinear(nn.Module):
    """`nn.Linear` with float16 weights computing in float16 between float32 activations."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().half(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().half(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.half(), self.weight, self.bias).float()


class _HalfEmbedding(nn.Module):
    """`nn.Embedding` over a float16 table, returning float32 rows."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.weight = nn.Parameter(embedding.weight.detach().half(), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight).float()


def _to_half(module: nn.Module, notes: list[str]) -> None:
    """Swap linears and embeddings for float16 ones; norms, attention and state stay float32."""
    count = len(_replace_modules(module, nn.Linear, _HalfLinear) + _replace_modules(module, nn.Embedding,
                                                                                      _HalfEmbedding))
    notes.append(f"{count} linear/embedding weights in float16 (the rest stays float32)")


def _export(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(module, args, strict=False)


def _int8(module: nn.Module, args: tuple[torch.Tensor, ...], notes: list[str]) -> torch.export.ExportedProgram:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class DynamicQuantizer(XNNPACKQuantizer):
        """XNNPACKQuantizer without its scalar-to-float-tensor rewrite, which only static add/mul need and
        which turns integer index arithmetic (`code + codebook * vocab`) into float."""

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return model

    quantizer = DynamicQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    captured = _export(module, args).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        prepared(*args)
    converted = convert_pt2e(prepared)
    n = sum(1 for node in converted.graph.nodes if "choose_qparams" in str(node.target))
    notes.append(f"{n} dynamically quantized activation(s) (XNNPACKQuantizer, per-channel int8 weights)")
    return _export(converted, args)


def _int4(module: nn.Module, args: tuple[torch.Tensor, ...], group: int, notes: list[str]):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    skipped: list[str] = []

    def eligible(m: nn.Module, fqn: str) -> bool:
        if not isinstance(m, nn.Linear):
            return False
        if m.in_features % group:
            skipped.append(f"{fqn} (in_features {m.in_features} not divisible by group {group})")
            return False
        return True

    quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                            weight_granularity=PerGroup(group)), filter_fn=eligible)
    for s in skipped:
        log.info("int4: left %s in fp32", s)
    notes.extend(f"kept fp32: {s}" for s in skipped)
    return _export(module, args)


def quantize_graph(graph: Graph, recipe: str, group_size: int, path: Path,
                   on_note: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Quantize `graph` (its module is copied, not changed) with `recipe` and write it as an XNNPACK `.pte`."""
    args = graph.example_args()
    module = copy.deepcopy(graph.module).eval()
    notes: list[str] = []
    if recipe == "fp32":
        program = _export(module, args)
    elif recipe == "fp16":
        _to_half(module, notes)
        program = _export(module, args)
    elif recipe == "int8":
        _replace_heads(module, notes)
        _replace_embeddings(module, 8, INT8_GROUP, notes)
        program = _int8(module, args, notes)
    elif recipe == "int4":
        _replace_heads(module, notes)
        _replace_embeddings(module, 4, group_size, notes)
        program = _int4(module, args, group_size, notes)
    else:
        raise ValueError(f"executorch cannot do recipe {recipe}")
    for note in notes:
        log.info("%s %s: %s", graph.name, recipe, note)
        on_note(note)
    return export_executorch(graph, path, program=program)
