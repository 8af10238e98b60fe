"""ONNX quantization, working on a bundle's `.onnx` files directly (no torch needed).

- ``fp16``: float initializers stored as float16, each followed by a `Cast` to float32. The file halves;
  compute stays float32 (onnxruntime folds the casts when it loads the model), so every provider runs it.
- ``int8``: `onnxruntime.quantization.quantize_dynamic`, per-channel symmetric int8 weights and dynamic
  uint8 activations for MatMul (and Conv); lookup tables become per-row int8 (see `tables.py`). With the
  default 8-bit MatMulNBits kernel (`INT8_KERNEL`), convolutions stay fp32 (see `_int8`).
- ``int4``: `MatMulNBits` (group-wise symmetric int4, `accuracy_level=4`: int8 dynamic activations inside
  the kernel) via `onnxruntime.quantization.matmul_nbits_quantizer`; tables become group-wise int4.
- ``npu-int8`` / ``npu-a16w8``: static QDQ laid out for Qualcomm's HTP (`get_qnn_qdq_config`): every operator
  quantized, per-tensor uint8 / uint16 activations calibrated on real graph inputs, per-channel symmetric int8
  weights, shapes as exported (all fixed). a16w8 is the usual accuracy choice on Hexagon.

Both npu recipes first retype the graph's int64 tensors as int32 (`edge.quantize.npu`: the HTP has no 64-bit
integers; the session casts at the graph's boundary), and record which operators stay float.

Before any recipe, a `Gemm` with a constant transposed weight is rewritten as `MatMul` (+ `Add`), so the
MatMul quantizers see every linear layer.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.export.onnx import save_onnx
from edge.quantize.recipes import NPU_RECIPES
from edge.quantize.tables import INT8_GROUP, quantize_table

log = logging.getLogger(__name__)

# Initializers smaller than this (norm weights, shape constants) are left alone by fp16 and the tables.
MIN_ELEMENTS = 1024
# int8 kernel: "nbits" (8-bit MatMulNBits, symmetric, blocks of up to INT8_BLOCK along K, int8 activations
# inside the kernel) or "dynamic" (quantize_dynamic: per-channel weights, per-tensor dynamic uint8 activations).
# Measured on csm-tiny's LM graphs (max abs error of the hidden output vs fp32 on the example inputs):
# nbits 0.035 / 0.022, dynamic 0.29 / 0.067 (lm_prefill / lm_step), files within 4% of each other: nbits wins.
INT8_KERNEL = "nbits"
INT8_BLOCK = 128


def _initializers(model: onnx.ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _unique(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite `Gemm(A, W, C?)` with constant W (alpha = beta = 1, no transA) as `MatMul(A, W') (+ C)`."""
    inits = _initializers(model)
    nodes, changed = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        wname = _unique(model, node.input[1] + "_kn")
        model.graph.initializer.append(numpy_helper.from_array(w, wname))
        has_bias = len(node.input) > 2 and node.input[2]
        out = _unique(model, node.output[0] + "_mm") if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], wname], [out], name=(node.name or "gemm") + "_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused(model)
    return changed


def _drop_unused(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def to_fp16_weights(model: onnx.ModelProto) -> int:
    """Store every float32 initializer of at least MIN_ELEMENTS as float16 + a Cast back to float32."""
    casts, count = [], 0
    for t in list(model.graph.initializer):
        if t.data_type != TensorProto.FLOAT or int(np.prod(t.dims)) < MIN_ELEMENTS:
            continue
        w = numpy_helper.to_array(t)
        if np.abs(w).max() > np.finfo(np.float16).max:  # e.g. an additive mask of float32 minimums
            continue
        half = _unique(model, t.name + "_fp16")
        model.graph.initializer.remove(t)
        model.graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), half))
        casts.append(helper.make_node("Cast", [half], [t.name], to=TensorProto.FLOAT, name=t.name + "_cast"))
        count += 1
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _const(model: onnx.ModelProto, value: np.ndarray, base: str) -> str:
    name = _unique(model, base)
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def quantize_tables(model: onnx.ModelProto, bits: int, group: int, notes: list[str]) -> int:
    """Replace each `Gather(constant table, ids)` on axis 0 by a gather of quantized rows + dequantization."""
    inits = _initializers(model)
    nodes, count = [], 0
    shared: dict[str, tuple[str, str, int, int]] = {}  # table -> (quantized data, scales, bits, group)
    for node in model.graph.node:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) < 2 \
                or int(np.prod(table.dims)) < MIN_ELEMENTS:
            nodes.append(node)
            continue
        if axis != 0:
            notes.append(f"kept fp32: table {table.name} (gathered on axis {axis}, not 0)")
            nodes.append(node)
            continue
        if table.name not in shared:  # a table gathered by several nodes is quantized once, for all of them
            w = numpy_helper.to_array(table)
            b = bits
            try:
                q = quantize_table(w, b, group)
            except ValueError:
                b = 8  # int4 packs pairs: an odd row length falls back to int8
                q = quantize_table(w, b, group)
                notes.append(f"table {table.name}: last axis {w.shape[-1]} is odd, int8 instead of int4")
            shared[table.name] = (_const(model, q.data, f"{table.name}_qdata"),
                                  _const(model, q.scales, f"{table.name}_qscale"), b, q.group)
            notes.append(f"table {table.name} {list(w.shape)}: int{b}, group {q.group}")
        nodes.extend(_dequant_gather(model, node, *shared[table.name], tuple(table.dims)))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused(model)
    return count


def _dequant_gather(model: onnx.ModelProto, node: onnx.NodeProto, qdata: str, qscale: str,
                    bits: int, group: int, shape: tuple[int, ...]) -> list[onnx.NodeProto]:
    p = node.name or node.output[0]
    ids, out = node.input[1], node.output[0]
    mid, d = list(shape[1:-1]), shape[-1]

    def t(suffix: str) -> str:
        return _unique(model, f"{p}_{suffix}")

    rows, srows, sf, sfu, ishape = t("rows"), t("srows"), t("sf"), t("sfu"), t("ishape")
    nodes = [
        helper.make_node("Gather", [qdata, ids], [rows], axis=0),
        helper.make_node("Gather", [qscale, ids], [srows], axis=0),
        helper.make_node("Cast", [srows], [sf], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [sf, _const(model, np.array([-1], np.int64), f"{p}_m1")], [sfu]),
        helper.make_node("Shape", [ids], [ishape]),
    ]
    if bits == 4:
        lo, hi, lo1, hi1, pairs, ints = t("lo"), t("hi"), t("lo1"), t("hi1"), t("pairs"), t("ints")
        m1 = _const(model, np.array([-1], np.int64), f"{p}_ax")
        nodes += [
            helper.make_node("BitwiseAnd", [rows, _const(model, np.array(15, np.uint8), f"{p}_15")], [lo]),
            helper.make_node("BitShift", [rows, _const(model, np.array(4, np.uint8), f"{p}_4")], [hi],
                             direction="RIGHT"),
            helper.make_node("Unsqueeze", [lo, m1], [lo1]),
            helper.make_node("Unsqueeze", [hi, m1], [hi1]),
            helper.make_node("Concat", [lo1, hi1], [pairs], axis=-1),
            helper.make_node("Cast", [pairs], [ints], to=TensorProto.FLOAT),
        ]
        vals = t("vals")
        nodes.append(helper.make_node("Sub", [ints, _const(model, np.array(8, np.float32), f"{p}_8")], [vals]))
    else:
        vals = t("vals")
        nodes.append(helper.make_node("Cast", [rows], [vals], to=TensorProto.FLOAT))
    bshape, blocks, scaled, oshape = t("bshape"), t("blocks"), t("scaled"), t("oshape")
    tail_b = _const(model, np.array([*mid, d // group, group], np.int64), f"{p}_tailb")
    tail_o = _const(model, np.array([*mid, d], np.int64), f"{p}_tailo")
    nodes += [
        helper.make_node("Concat", [ishape, tail_b], [bshape], axis=0),
        helper.make_node("Reshape", [vals, bshape], [blocks]),
        helper.make_node("Mul", [blocks, sfu], [scaled]),
        helper.make_node("Concat", [ishape, tail_o], [oshape], axis=0),
        helper.make_node("Reshape", [scaled, oshape], [out]),
    ]
    return nodes


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


class _Reader:
    """Feeds for `quantize_static`'s calibration, one dict per recorded call."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # quantize_static may call it; the list is consumed once
        pass


def quantize_file(src: Path, dst: Path, recipe: str, group_size: int,
                  calibration: list[dict[str, np.ndarray]] | None = None,
                  on_note: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Quantize the ONNX model `src` (external data next to it) with `recipe` into `dst` (+ `dst.data`)."""
    model = onnx.load(str(src))
    notes: list[str] = []
    if recipe != "fp32" and (n := gemm_to_matmul(model)):
        notes.append(f"{n} Gemm rewritten as MatMul")
    if recipe == "fp16":
        notes.append(f"{to_fp16_weights(model)} initializers stored as float16 (compute stays float32)")
    elif recipe == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantize_tables(model, 4, group_size, notes)
        q = MatMulNBitsQuantizer(model, bits=4, block_size=group_size, is_symmetric=True, accuracy_level=4,
                                 op_types_to_quantize=("MatMul",))
        q.process()
        model = q.model.model
        notes.append(f"{_count(model, 'MatMulNBits')} MatMul -> MatMulNBits int4 g{group_size}; "
                     f"{_count(model, 'MatMul')} MatMul left (no constant weight)")
        if convs := _count(model, "Conv") + _count(model, "ConvTranspose"):
            notes.append(f"kept fp32: {convs} Conv/ConvTranspose (onnxruntime has no int4 convolution; use int8)")
    elif recipe == "int8":
        quantize_tables(model, 8, INT8_GROUP, notes)
        model = _int8(model, notes)
    elif recipe in NPU_RECIPES:
        if not calibration:
            raise ValueError(f"{recipe} needs calibration feeds")
        model = _npu(model, recipe, calibration, notes)
    elif recipe != "fp32":
        raise ValueError(f"onnx cannot do recipe {recipe}")
    for note in notes:
        log.info("%s %s: %s", src.stem, recipe, note)
        on_note(note)
    return save_onnx(model, dst)


def _int8(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    if INT8_KERNEL == "nbits":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        block = _int8_block(model)
        q = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True, accuracy_level=4,
                                 op_types_to_quantize=("MatMul",))
        q.process()
        model = q.model.model
        notes.append(f"{_count(model, 'MatMulNBits')} MatMul -> 8-bit MatMulNBits, block {block}")
        if convs := _count(model, "Conv") + _count(model, "ConvTranspose"):
            # Measured on the real Mimi decoder (BENCHMARKS.md): onnxruntime's ConvInteger (with the dynamic
            # activation quantization around it) took 11.6 ms per frame where the fp32 Conv took 4.0 ms.
            notes.append(f"kept fp32: {convs} Conv/ConvTranspose (onnxruntime's int8 ConvInteger is slower than "
                         "its fp32 Conv on CPU)")
        return model
    return _dynamic(model, ["MatMul", "Conv"], notes)


def _dynamic(model: onnx.ModelProto, ops: list[str], notes: list[str]) -> onnx.ModelProto:
    """quantize_dynamic on `ops`: per-channel symmetric int8 weights, per-tensor dynamic uint8 activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        save_onnx(model, src)
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=ops, use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
        out = onnx.load(str(dst))
    notes.append(f"{_count(out, 'DynamicQuantizeMatMul') + _count(out, 'MatMulInteger')} MatMul and "
                 f"{_count(out, 'ConvInteger')} Conv dynamically quantized (per-channel int8 weights)")
    if _count(out, "ConvTranspose"):
        notes.append(f"kept fp32: {_count(out, 'ConvTranspose')} ConvTranspose (no dynamic int8 kernel in onnxruntime)")
    return out


def _int8_block(model: onnx.ModelProto) -> int:
    """INT8_BLOCK, or the largest power of two that fits the smallest constant MatMul K (no padding)."""
    inits = _initializers(model)
    ks = [inits[n.input[1]].dims[-2] for n in model.graph.node
          if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) >= 2]
    k = min(ks, default=INT8_BLOCK)
    return max(16, min(INT8_BLOCK, 1 << (int(k).bit_length() - 1)))


def _searches(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose result only feeds an ArgMin/ArgMax (through elementwise ops): nearest-centroid searches,
    such as a codec encoder's distances to its codebook. Per-tensor activation quantization flattens the small
    differences between candidate distances the argmin picks from, so these stay fp32."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("ArgMin", "ArgMax"):
            continue
        x = producer.get(node.input[0])
        while x is not None and x.op_type in ("Sqrt", "Clip", "Relu", "Add", "Sub", "Mul", "Neg", "Abs"):
            x = producer.get(x.input[0])
        if x is not None and x.op_type in ("MatMul", "Gemm"):
            found.append(x.name)
    return found


def _npu(model: onnx.ModelProto, recipe: str, calibration: list[dict[str, np.ndarray]],
         notes: list[str]) -> onnx.ModelProto:
    """An npu recipe: the graph made NPU-clean (`edge.quantize.npu`), then static QDQ for the HTP calibrated on
    `calibration`; the notes say what changed and what stays float."""
    from edge.quantize.npu import (
        MASK_FILL,
        MAX_RANK,
        finite_masks,
        fold_rank,
        fuse_gelu,
        int64_to_int32,
        integer_mod,
    )

    if retyped := int64_to_int32(model):
        _drop_unused(model)
        notes.append(f"int32 at the graph boundary (the HTP has no int64): {', '.join(retyped)}")
    if n := integer_mod(model):
        notes.append(f"{n} integer Mod rewritten with Div, Mul, Sub (the HTP compiles no integer Mod)")
    if folded := fold_rank(model):
        _drop_unused(model)
        notes.append(f"first two axes merged at the graph boundary (the HTP takes at most {MAX_RANK}): "
                     f"{', '.join(folded)}")
    if n := finite_masks(model):
        notes.append(f"{n} attention mask constant(s): fill below -1e4 set to {MASK_FILL:g} (a finite range)")
    if n := fuse_gelu(model):
        _drop_unused(model)
        notes.append(f"{n} erf GELU fused into Gelu (the HTP has no Erf)")
    int32 = {v.name for v in model.graph.input if v.type.tensor_type.elem_type == TensorProto.INT32}
    feeds = [{n: (a.astype(np.int32) if n in int32 else a).reshape(-1, *a.shape[2:]) if n in folded else
              a.astype(np.int32) if n in int32 else a for n, a in f.items()} for f in calibration]
    out = _htp_qdq(model, feeds, notes, 16 if recipe == "npu-a16w8" else 8)
    kept = float_ops(out)
    notes.append("kept float: " + (", ".join(f"{n} {op}" for op, n in sorted(kept.items())) if kept else
                                   "nothing (every operator runs quantized)"))
    return out


def float_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Operators of a QDQ model that compute in float: a float input not from a DequantizeLinear (nor a
    constant). On the HTP these run in fp16; on the CPU EP in fp32. Op type -> count."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    floats = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT} | \
        {v.name for v in model.graph.input if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(model)
    floats |= {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
               if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            src = producer.get(name)
            if name in floats and name not in inits and (src is None or src.op_type != "DequantizeLinear"):
                out[node.op_type] = out.get(node.op_type, 0) + 1
                break
    return out


def _own_norm_scales(model: onnx.ModelProto) -> list[str]:
    """Give each LayerNormalization's constant scale an initializer of its own; returns their names."""
    inits = _initializers(model)
    names = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = _unique(model, f"{node.input[1]}_{node.name or 'norm'}")
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[1]]), name))
        node.input[1] = name
        names.append(name)
    _drop_unused(model)
    return names


def _htp_qdq(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], notes: list[str],
             bits: int) -> onnx.ModelProto:
    """QDQ for the HTP: `bits`-bit (8 or 16) unsigned per-tensor activations, per-channel symmetric int8
    weights, every operator quantized (`get_qnn_qdq_config` adds the type conversions the HTP's operators
    need)."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    searches = _searches(model)
    if searches:
        notes.append(f"kept float: {len(searches)} nearest-centroid search MatMul(s) (argmin over distances)")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        # The HTP's 16-bit LayerNorm takes its scale as uint8 (it refuses a symmetric int8 one); a scale shared
        # with other operators (an exporter dedups equal constants) gets its own copy, so they keep theirs.
        norms = {name: [{"quant_type": QuantType.QUInt8, "symmetric": False}] for name in _own_norm_scales(model)}
        save_onnx(model, src)
        activations = QuantType.QUInt16 if bits == 16 else QuantType.QUInt8
        config = get_qnn_qdq_config(str(src), _Reader(calibration), activation_type=activations,
                                    weight_type=QuantType.QInt8, per_channel=True, weight_symmetric=True,
                                    init_overrides=norms or None, nodes_to_exclude=searches or None)
        config.use_external_data_format = True
        # Data-movement operators (Slice, Gather, Transpose, Reshape) are quantized even when their input is a
        # float graph input (a KV cache), so no float op reaches the HTP.
        config.extra_options["ForceQuantizeNoInputCheck"] = True
        quantize(str(src), str(dst), config)
        out = onnx.load(str(dst))
    notes.append(f"static QDQ a{bits}w8: {_count(out, 'QuantizeLinear')} QuantizeLinear / "
                 f"{_count(out, 'DequantizeLinear')} DequantizeLinear, calibrated on {len(calibration)} recorded calls")
    return out
