"""The device catalogue: one JSON file per device in `catalogue/`, each fact with its public source.

A fact is `{"value": ..., "source": {"url", "says", "checked"} | [...]}`, or `{"value": ..., "assumed":
"why"}` where no public figure exists; `derived` says how a number was computed from published ones.
The CPU's peak FP32 throughput is never stored: it is derived here from the cores listed
(count x clock x FP32 FLOPs per cycle), and the data file says where FLOPs per cycle come from.

    from edge.devices.catalogue import get_device, load_catalogue
    pi = get_device("raspberry-pi-5")
    pi.bandwidth_gbs, pi.peak_gflops, pi.ram_gb
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from edge.errors import EdgeError
from edge.runtime.qnn import SOCS

_SOURCE = {
    "type": "object",
    "required": ["url", "says"],
    "properties": {"url": {"type": "string", "pattern": "^https?://"}, "says": {"type": "string", "minLength": 1},
                   "checked": {"type": "string"}},
}
_FACT = {
    "type": "object",
    "required": ["value"],
    "properties": {
        "source": {"oneOf": [_SOURCE, {"type": "array", "items": _SOURCE, "minItems": 1}]},
        "assumed": {"type": "string", "minLength": 1},
        "derived": {"type": "string"},
        "note": {"type": "string"},
    },
    "oneOf": [{"required": ["source"]}, {"required": ["assumed"]}],
}
_CORES = {
    "type": "array", "minItems": 1,
    "items": {"type": "object", "required": ["count", "core", "ghz", "fp32_flops_per_cycle"],
              "properties": {"count": {"type": "integer", "minimum": 1}, "core": {"type": "string"},
                             "ghz": {"type": "number", "exclusiveMinimum": 0},
                             "fp32_flops_per_cycle": {"type": "number", "exclusiveMinimum": 0}}},
}
_NPU = {"oneOf": [{"type": "null"}, {
    "type": "object", "required": ["name", "tops", "reached_through"],
    "properties": {"name": {"type": "string"}, "tops": {"type": ["number", "null"]},
                   "reached_through": {"type": "array", "items": {"type": "string"}}}}]}
# How edge reaches a device's NPU: the Snapdragon HTP through `qnn` (the SoC its context is compiled for), the
# Apple Neural Engine through `coreml` (the chip), or null where edge has no path to it.
_NPU_PATH = {"oneOf": [{"type": "null"}, {
    "type": "object", "required": ["backend", "soc"], "additionalProperties": False,
    "properties": {"backend": {"const": "qnn"}, "soc": {"enum": list(SOCS)}}}, {
    "type": "object", "required": ["backend", "chip"], "additionalProperties": False,
    "properties": {"backend": {"const": "coreml"}, "chip": {"type": "string", "minLength": 1}}}]}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
SCHEMA = {
    "type": "object",
    "required": ["name", "title", "kind", "cpu", "memory_bandwidth_gbs", "ram_gb", "npu", "npu_path",
                 "backends"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "title": {"type": "string"},
        "kind": {"type": "string"},
        "cpu": {"allOf": [_FACT, {"properties": {"value": _CORES}}]},
        "memory_bandwidth_gbs": {"allOf": [_FACT, {"properties": {"value": _POSITIVE}}]},
        "ram_gb": {"allOf": [_FACT, {"properties": {"value": _POSITIVE}}]},
        "npu": {"allOf": [_FACT, {"properties": {"value": _NPU}}]},
        "npu_path": {"allOf": [_FACT, {"properties": {"value": _NPU_PATH}}]},
        "backends": {"allOf": [_FACT, {"properties": {"value": {"type": "array", "items": {"type": "string"}}}}]},
    },
}


@dataclass(frozen=True)
class Device:
    """A catalogued device: the facts that bound how fast a graph call can be."""

    name: str
    title: str
    kind: str
    bandwidth_gbs: float  # theoretical peak DRAM bandwidth
    ram_gb: float
    cores: tuple[dict, ...]
    npu: dict | None
    npu_path: dict | None  # {"backend": "qnn", "soc": ...} | {"backend": "coreml", "chip": ...} | None
    backends: tuple[str, ...]
    facts: dict[str, Any]  # the data file as written, sources included

    @property
    def core_count(self) -> int:
        return sum(c["count"] for c in self.cores)

    @property
    def peak_gflops(self) -> float:
        """Peak FP32 GFLOP/s of all cores together: sum of count x GHz x FLOPs per cycle (derived)."""
        return sum(c["count"] * c["ghz"] * c["fp32_flops_per_cycle"] for c in self.cores)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "kind": self.kind,
            "memory_bandwidth_gbs": self.bandwidth_gbs, "ram_gb": self.ram_gb, "cores": self.core_count,
            "peak_fp32_gflops": round(self.peak_gflops, 1),
            "peak_fp32_gflops_derived": "sum over cores of count x GHz x FP32 FLOPs per cycle",
            "npu": self.npu, "npu_path": self.npu_path, "backends": list(self.backends),
            "build": self.build(), "facts": self.facts,
        }

    def build(self, preset: str = "edge-voice") -> dict[str, Any]:
        """Which bundle to build for this device, as the commands that build and run it."""
        text = '"Hello."'
        path = self.npu_path
        if path is None:
            return {"backend": "onnx", "why": "no NPU path: int8 matmuls on the CPU, the codec at fp16", "commands": [
                f"edge export {preset} --backend onnx --recipe lm=int8,depth=int8,codec=fp16 --out {preset}-cpu",
                f"edge speak {text} -b {preset}-cpu --backend onnx"]}
        if path["backend"] == "qnn":
            soc = path["soc"]
            return {"backend": "qnn", "why": f"the Hexagon NPU ({soc}): npu-a16w8 QDQ graphs with their QNN context "
                                              f"precompiled for {soc}, so the phone loads without compiling",
                    "commands": [
                        f"edge export {preset} --backend onnx --out {preset}-fp32",
                        f"edge quantize {preset}-fp32 --recipe npu-a16w8 --backend onnx --qnn-soc {soc} "
                        f"--out {preset}-{soc.lower()}",
                        f"EDGE_QNN_SOC={soc} edge speak {text} -b {preset}-{soc.lower()} --backend qnn"]}
        return {"backend": "coreml", "why": f"the Apple Neural Engine ({path['chip']}): .pte files lowered with "
                                            "ExecuTorch's Core ML delegate (iOS 17 / macOS 14 or newer)",
                "commands": [f"edge export {preset} --backend coreml --out {preset}-ane",
                             f"edge speak {text} -b {preset}-ane --backend coreml"]}


def _parse(data: dict, origin: str) -> Device:
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise EdgeError(f"device file {origin} is invalid at {where}: {e.message}") from None
    if f"{data['name']}.json" != origin:
        raise EdgeError(f"device file {origin} names itself '{data['name']}'; the file must be {data['name']}.json")
    return Device(data["name"], data["title"], data["kind"], float(data["memory_bandwidth_gbs"]["value"]),
                  float(data["ram_gb"]["value"]), tuple(data["cpu"]["value"]), data["npu"]["value"],
                  data["npu_path"]["value"], tuple(data["backends"]["value"]), data)


@cache
def load_catalogue() -> dict[str, Device]:
    """Every catalogued device by name, validated."""
    folder = resources.files("edge.devices").joinpath("catalogue")
    devices = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            device = _parse(json.loads(entry.read_text()), entry.name)
            devices[device.name] = device
    return devices


def get_device(name: str) -> Device:
    devices = load_catalogue()
    if name not in devices:
        raise EdgeError(f"unknown device '{name}'; the catalogue has: {', '.join(devices)} (see `edge devices`)")
    return devices[name]
