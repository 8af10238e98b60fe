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
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
SCHEMA = {
    "type": "object",
    "required": ["name", "title", "kind", "cpu", "memory_bandwidth_gbs", "ram_gb", "npu", "backends"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
        "title": {"type": "string"},
        "kind": {"type": "string"},
        "cpu": {"allOf": [_FACT, {"properties": {"value": _CORES}}]},
        "memory_bandwidth_gbs": {"allOf": [_FACT, {"properties": {"value": _POSITIVE}}]},
        "ram_gb": {"allOf": [_FACT, {"properties": {"value": _POSITIVE}}]},
        "npu": {"allOf": [_FACT, {"properties": {"value": _NPU}}]},
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
            "npu": self.npu, "backends": list(self.backends), "facts": self.facts,
        }


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
                  tuple(data["backends"]["value"]), data)


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
