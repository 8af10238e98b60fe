"""NPU-clean ONNX graphs: what Qualcomm's HTP refuses, rewritten before an npu recipe quantizes a graph.

Found by loading csm-tiny's graphs on the HTP (onnxruntime-qnn, CPU fallback disabled) until all four loaded:

- int64 tensors (`int64_to_int32`): the HTP has no 64-bit integers; it refuses a `Gather`, `Unsqueeze` or
  `Concat` on int64 positions, codes or slot indices. The graph contract (`edge.export.graph`) stays int64, which
  the runtime and every other backend speak; the file carries them as int32 and the session casts at its
  boundary (`edge.runtime.sessions.Boundary`). Positions, codes and slots are far below 2**31: no value changes.
  What stays int64 is what the ONNX operator set requires to be and never reaches the device as a tensor: the
  constant shape operands (`Reshape`'s shape, `Slice`'s starts, a reduction's axes, ...).
- more than five axes (`fold_rank`): the 6-axis KV cache's first two axes are merged at the boundary (a view).
- integer `Mod` (`integer_mod`): not compiled by the HTP; rewritten with `Div`, `Mul`, `Sub`, `Add`.
- `Erf` (`fuse_gelu`): torch's erf GELU becomes one `Gelu`.
- float32's lowest as an attention-mask fill (`finite_masks`): a quantized tensor spans its whole range.

Each rewrite leaves every output of the fp32 graph as it was (`tests/test_npu.py`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

# Inputs (by position) that the ONNX operator set types as int64 only: shape operands, read as parameters.
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Unsqueeze": (1,), "Squeeze": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 3), "Expand": (1,),
    "Tile": (1,), "Split": (1,), "ConstantOfShape": (0,), "ReduceMean": (1,), "ReduceSum": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL2": (1,), "Resize": (3,), "TopK": (1,),
    "CumSum": (1,),
}
# Operators whose integer outputs are int64 by definition (an int64 source, not a rewritable tensor).
INT64_SOURCES = ("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "TopK")


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def int64_to_int32(model: onnx.ModelProto) -> list[str]:
    """Rewrite `model` in place so that every int64 tensor that flows through it (graph inputs and outputs,
    and everything computed from them) is int32; returns the graph inputs and outputs it retyped.

    Constant int64 operands of a rewritten node become int32 copies unless they are shape operands
    (`SHAPE_OPERANDS`), which stay int64 constants; an index an `ArgMin`/`ArgMax` returns (a codec encoder's
    codes) is cast to int32 where it is made. Raises ValueError where an int64 tensor would remain
    that is neither (e.g. a shape operand computed at run time): such a graph is not NPU-clean.
    """
    graph = model.graph
    consts = _constants(model)
    int32: set[str] = set()  # tensors now int32
    retyped: list[str] = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            value.type.tensor_type.elem_type = TensorProto.INT32
            int32.add(value.name)
            retyped.append(value.name)
    argmins = [n for n in graph.node if n.op_type in ("ArgMin", "ArgMax")]
    if not int32 and not argmins:
        return []
    copies: dict[str, str] = {}  # int64 constant -> its int32 copy
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {v.name for v in graph.input}

    def int32_copy(name: str) -> str:
        if name not in copies:
            value = consts[name]
            if value.size and (value.max() > np.iinfo(np.int32).max or value.min() < np.iinfo(np.int32).min):
                raise ValueError(f"int64 constant {name} does not fit int32")
            new, i = f"{name}_i32", 0
            while new in taken:
                i += 1
                new = f"{name}_i32_{i}"
            taken.add(new)
            graph.initializer.append(numpy_helper.from_array(value.astype(np.int32), new))
            copies[name] = new
        return copies[name]

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        operands = SHAPE_OPERANDS.get(node.op_type, ())
        if node.op_type in ("ArgMin", "ArgMax"):
            index = node.output[0]
            node.output[0] = f"{index}_int64"
            nodes.append(helper.make_node("Cast", [node.output[0]], [index], to=TensorProto.INT32,
                                          name=f"{node.name or index}_int32"))
            int32.add(index)
            continue
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == TensorProto.INT64:
                to.i = TensorProto.INT32
                int32.add(node.output[0])
            continue
        for i, name in enumerate(node.input):
            if i in operands and name in int32:
                raise ValueError(f"{node.op_type} node {node.name} takes a shape operand computed at run time")
        data = [i for i, name in enumerate(node.input) if name and i not in operands]
        if not any(node.input[i] in int32 for i in data) or node.op_type in INT64_SOURCES:
            continue
        for i in data:
            name = node.input[i]
            if name in int32:
                continue
            value = consts.get(name)
            if value is not None and value.dtype == np.int64:
                node.input[i] = int32_copy(name)
        if node.op_type == "Gather" and node.input[0] not in int32 and node.input[1] in int32:
            # Indices into a float table: the output keeps the table's type.
            continue
        for out in node.output:
            int32.add(out)
    del graph.node[:]
    graph.node.extend(nodes)
    # Intermediate value_info recorded as int64 would now contradict the graph; let shape inference redo it.
    keep = [v for v in graph.value_info if v.name not in int32]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.INT64:
            if value.name not in int32:
                raise ValueError(f"int64 output {value.name} is not computed from the graph's int64 inputs")
            value.type.tensor_type.elem_type = TensorProto.INT32
            retyped.append(value.name)
    _check(model)
    return retyped


def _check(model: onnx.ModelProto) -> None:
    """Raise ValueError if any int64 tensor is still computed at run time (constants are fine, and so is an
    `ArgMin`/`ArgMax` index, int64 by definition and cast to int32 where it is made: the HTP's own ArgMin
    returns int32)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    consts = {t.name for t in model.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    left = [o for n in model.graph.node if n.op_type not in ("Constant", "ArgMin", "ArgMax") for o in n.output
            if types.get(o) == TensorProto.INT64 and o not in consts]
    if left:
        raise ValueError(f"int64 tensors left after the int32 rewrite: {', '.join(left[:5])}")


def boundary_dtypes(model: onnx.ModelProto) -> dict[str, str]:
    """The graph inputs and outputs an NPU file carries as int32 (for the manifest): name -> "int32"."""
    return {v.name: "int32" for v in [*model.graph.input, *model.graph.output]
            if v.type.tensor_type.elem_type == TensorProto.INT32}




# The HTP's tensors have at most five axes.
MAX_RANK = 5


def fold_rank(model: onnx.ModelProto, max_rank: int = MAX_RANK) -> list[str]:
    """Give every graph input and output of more than `max_rank` axes its first two axes merged (a KV cache
    `(layers, 2, batch, heads, slots, dim)` becomes `(layers * 2, ...)`), in place; returns their names.

    The session reshapes at the boundary (a view, no copy). Inside, a `Gather(x, i, axis=0)` of such an input
    becomes a `Slice` of rows `i*b : (i+1)*b` (the same tensor), and an output built as
    `Concat(Unsqueeze(z_j, 0), ..., axis=0)` becomes `Concat(z_j, ..., axis=0)`. Raises ValueError for any
    other use: such a graph is not NPU-clean.
    """
    graph = model.graph
    consts = _constants(model)
    producer, consumers = _links(graph)
    folded, drop = [], set()
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) <= max_rank:
            continue
        a, b = dims[0].dim_value, dims[1].dim_value
        if value in graph.input:
            for node in consumers.get(value.name, []):
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                index = consts.get(node.input[1]) if node.op_type == "Gather" else None
                if index is None or axis != 0 or index.ndim != 0:
                    raise ValueError(f"{node.op_type} node {node.name} uses the {len(dims)}-axis input {value.name}")
                i = int(index) % a
                starts, ends, axes = (_int64_const(model, f"{node.name}_{k}", v)
                                      for k, v in (("starts", i * b), ("ends", (i + 1) * b), ("axes", 0)))
                node.op_type = "Slice"
                del node.attribute[:]
                del node.input[:]
                node.input.extend([value.name, starts, ends, axes])
        else:
            concat = producer.get(value.name)
            axis = next((a.i for a in concat.attribute if a.name == "axis"), None) if concat is not None else None
            parts = [producer.get(x) for x in concat.input] if concat is not None else []
            if concat is None or concat.op_type != "Concat" or axis != 0 or any(
                    p is None or p.op_type != "Unsqueeze" or consts.get(p.input[1]) is None
                    or list(np.atleast_1d(consts[p.input[1]])) != [0] or len(consumers[p.output[0]]) != 1
                    for p in parts):
                raise ValueError(f"the {len(dims)}-axis output {value.name} is not a Concat of Unsqueeze(axis 0)")
            del concat.input[:]
            concat.input.extend(p.input[0] for p in parts)
            drop.update(id(p) for p in parts)
        dims[1].dim_value = a * b
        value.type.tensor_type.shape.dim.remove(dims[0])
        folded.append(value.name)
    if drop:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
    if folded:
        del graph.value_info[:]
        onnx.checker.check_model(model)
    return folded


def _links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """Each tensor's producing node, and the nodes that consume it."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _int64_const(model: onnx.ModelProto, base: str, value: int) -> str:
    taken = {t.name for t in model.graph.initializer}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), name))
    return name


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace each erf GELU, ``x * 0.5 * (1 + Erf(x / sqrt(2)))`` as torch exports it, by one `Gelu`
    (com.microsoft: onnxruntime's CPU kernel and QNN's `Gelu` both take it), in place; returns how many.

    The HTP has no `Erf`. QNN's own fusion of this pattern needs the five float nodes side by side, which a
    QDQ graph no longer has, so they are fused before quantization.
    """
    graph = model.graph
    consts = _constants(model)
    producer, consumers = _links(graph)

    def const(node: onnx.NodeProto, value: float) -> str | None:
        """The input of binary `node` that is not the scalar constant `value` (None if neither is)."""
        for i in (0, 1):
            c = consts.get(node.input[i])
            if c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) < 1e-4:
                return node.input[1 - i]
        return None

    def only(name: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in {o.name for o in graph.output} else None

    drop: set[int] = set()
    fused: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (the last Mul, the Gelu that takes its place)
    for erf in graph.node:
        if erf.op_type != "Erf" or (scale := producer.get(erf.input[0])) is None:
            continue
        x = const(scale, 2 ** 0.5) if scale.op_type == "Div" else \
            const(scale, 2 ** -0.5) if scale.op_type == "Mul" else None
        add = only(erf.output[0])
        if x is None or add is None or add.op_type != "Add" or const(add, 1.0) != erf.output[0]:
            continue
        first = only(add.output[0])
        second = only(first.output[0]) if first is not None and first.op_type == "Mul" else None
        if second is None or second.op_type != "Mul":
            continue
        # The two Muls, in either order: one by 0.5, one by x.
        half_first = const(first, 0.5) == add.output[0]
        if not ((half_first and x in second.input) or (const(second, 0.5) == first.output[0] and x in first.input)):
            continue
        if only(scale.output[0]) is None:
            continue
        gelu = helper.make_node("Gelu", [x], [second.output[0]], name=f"{erf.name}_gelu", domain="com.microsoft")
        drop.update(id(n) for n in (scale, erf, add, first, second))
        fused.append((second, gelu))
    if not fused:
        return 0
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    by_last = {id(last): gelu for last, gelu in fused}
    nodes = []
    for node in graph.node:
        if id(node) in by_last:
            nodes.append(by_last[id(node)])
        elif id(node) not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # The quantizer quantizes only tensors whose type it knows, and onnx's inference does not know this Gelu.
    graph.value_info.extend(inferred[g.output[0]] for _, g in fused if g.output[0] in inferred)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(fused)



# What an attention mask's fill (float32's lowest, or -inf) becomes in a quantized graph: low enough that a
# masked score's softmax weight vanishes (e**-64 ~ 1e-28), finite and small enough that the scores keep their
# resolution (16-bit activations over [-64, max score]: steps of about 0.001).
MASK_FILL = -64.0
_HUGE = 1e4


def finite_masks(model: onnx.ModelProto, fill: float = MASK_FILL) -> int:
    """Replace the huge negative values of float constants that feed a `Where` or `Add` (attention masks) by
    `fill`, in place; returns how many constants changed. A quantized tensor spans its whole range: one value
    of -3.4e38 in it leaves no resolution for the scores it masks."""
    users = {n.op_type for n in model.graph.node}
    if not users & {"Where", "Add"}:
        return 0
    feeding = {i for n in model.graph.node if n.op_type in ("Where", "Add") for i in n.input}
    count = 0
    for i, t in enumerate(model.graph.initializer):
        if t.name not in feeding or t.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(t)
        huge = value < -_HUGE
        if huge.any():
            new = np.where(huge, np.float32(fill), value).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, t.name))
            count += 1
    return count


def integer_mod(model: onnx.ModelProto) -> int:
    """Rewrite each int32 `Mod(a, b)` (fmod 0, b a positive constant) as ``t - (t / b) * b`` with
    ``t = a - (a / b) * b + b``, in place; returns how many. The HTP compiles no integer `Mod` ("Failed to
    finalize QNN graph") but does integer `Div`, `Mul`, `Sub` and `Add`. `Div` truncates: the first round gives
    a remainder in (-b, b), so `t` is in (0, 2b) and the second gives the floor modulo `Mod` does."""
    graph = model.graph
    consts = _constants(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types |= {t.name: t.data_type for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        b = consts.get(node.input[1]) if node.op_type == "Mod" else None
        fmod = next((a.i for a in node.attribute if a.name == "fmod"), 0)
        if b is None or fmod or types.get(node.input[0]) != TensorProto.INT32 or b.dtype != np.int32 or (b <= 0).any():
            nodes.append(node)
            continue
        a, y, p = node.input[0], node.output[0], node.name or node.output[0]
        bb = node.input[1]
        nodes += [
            helper.make_node("Div", [a, bb], [f"{p}_q0"], name=f"{p}_div0"),
            helper.make_node("Mul", [f"{p}_q0", bb], [f"{p}_m0"], name=f"{p}_mul0"),
            helper.make_node("Sub", [a, f"{p}_m0"], [f"{p}_r0"], name=f"{p}_sub0"),
            helper.make_node("Add", [f"{p}_r0", bb], [f"{p}_t"], name=f"{p}_add"),
            helper.make_node("Div", [f"{p}_t", bb], [f"{p}_q1"], name=f"{p}_div1"),
            helper.make_node("Mul", [f"{p}_q1", bb], [f"{p}_m1"], name=f"{p}_mul1"),
            helper.make_node("Sub", [f"{p}_t", f"{p}_m1"], [y], name=f"{p}_sub1"),
        ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count
