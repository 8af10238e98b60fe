"""Weight-only quantization of lookup tables (embeddings, stacked heads) shared by both backends.

A table is read a few rows at a time (a `Gather` / `index_select`), so it needs no matmul kernel:
rows are stored as symmetric int8 or packed int4 with one fp16 scale per group of the last axis,
and only the rows a call reads are dequantized. Both exporters express the dequantization with
plain ops (gather, shift, and, cast, mul) that every runtime has, so no extra kernel library is
needed on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# int8 tables keep one scale per this many values of a row (or per row when it does not divide the row):
# per row for ordinary embeddings, and still fine-grained for a row that is a whole flattened matrix.
INT8_GROUP = 1024


@dataclass
class QuantTable:
    """A quantized table: `data` int8 (…, D) or uint8 packed int4 (…, D/2), `scales` fp16 (…, D/group)."""

    data: np.ndarray
    scales: np.ndarray
    bits: int
    group: int
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes

    def dequantize(self) -> np.ndarray:
        q = unpack_int4(self.data) if self.bits == 4 else self.data.astype(np.int8)
        lead, d = self.shape[:-1], self.shape[-1]
        blocks = q.reshape(*lead, d // self.group, self.group).astype(np.float32)
        return (blocks * self.scales.astype(np.float32)[..., None]).reshape(self.shape)


def table_group(last_dim: int, group: int, bits: int) -> int:
    """The group actually used along a last axis of `last_dim` (the whole row when `group` does not divide it)."""
    g = group if group > 0 and last_dim % group == 0 else last_dim
    if bits == 4 and g % 2:
        raise ValueError(f"int4 tables need an even group, got {g} for a last axis of {last_dim}")
    return g


def quantize_table(w: np.ndarray, bits: int, group: int) -> QuantTable:
    """Symmetric round-to-nearest quantization of `w` along its last axis in groups of `group`."""
    if bits not in (4, 8):
        raise ValueError(f"tables quantize to 4 or 8 bits, not {bits}")
    w = np.asarray(w, dtype=np.float32)
    *lead, d = w.shape
    g = table_group(d, group, bits)
    blocks = w.reshape(*lead, d // g, g)
    qmax = 7 if bits == 4 else 127
    absmax = np.abs(blocks).max(axis=-1)
    scales = np.maximum(absmax / qmax, np.finfo(np.float16).tiny).astype(np.float16)
    q = np.clip(np.rint(blocks / scales.astype(np.float32)[..., None]), -qmax - 1, qmax).astype(np.int8)
    q = q.reshape(w.shape)
    data = pack_int4(q) if bits == 4 else q
    return QuantTable(data, scales, bits, g, tuple(w.shape))


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7] (…, D even) -> uint8 (…, D/2): element 2i in the low nibble, 2i+1 in the high."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(p: np.ndarray) -> np.ndarray:
    lo = (p & 0x0F).astype(np.int8) - 8
    hi = (p >> 4).astype(np.int8) - 8
    return np.stack([lo, hi], axis=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)
