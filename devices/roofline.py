"""Roofline projections of a bundle's graphs onto catalogued devices. Estimates, labelled as such.

Per graph call the work is W bytes moved (weights read + state read and written) and F FLOPs
(see `opprofile`). A roofline says a call takes at least max(W / bandwidth, F / compute).

Calibration: real calls rarely reach the roofline (per-op dispatch, small kernels, threads waking).
We measure how far this machine is from its own roofline, per graph and backend,

    efficiency = roofline_here / measured_here,   roofline_here = max(W / B_here, F / C_here)

where measured_here is the graph's time per call inside the streaming loop (sessions interleaved as
a voice runs them; a call timed alone on hot caches is often several times faster),
with B_here and C_here measured here (read bandwidth, onnxruntime SGEMM), and assume the same
graph on the same backend lands at the same fraction of a device's roofline:

    projected = max(W / (B_dev x SUSTAINED), F / (C_dev x SUSTAINED)) / efficiency

B_dev and C_dev are the catalogue's theoretical peaks (C_dev = all cores x clock x FLOPs/cycle);
SUSTAINED converts a theoretical peak into a sustained figure comparable to what we measure here.
"""

from __future__ import annotations

from typing import Any

from edge.devices.catalogue import Device

SUSTAINED = 0.7  # fraction of theoretical peak DRAM bandwidth / FP32 FLOP/s a CPU sustains (assumed)
APP_RAM_SHARE = 0.5  # share of a device's RAM one app can count on (assumed; the OS and other apps hold the rest)
LABEL = "ESTIMATE (roofline model, calibrated on this machine; not measured on the device)"


def assumptions(bandwidth_gbs: float, compute_gflops: float, threads: int) -> list[str]:
    """What every projection assumes, in words (printed with every projection)."""
    return [
        "Each call reads its weights once from DRAM, reads its state and writes what changed (a KV cache's new "
        "slots, conv tails whole); "
        "bytes and FLOPs are counted on the bundle's ONNX graph with real shapes.",
        f"This machine's anchors, measured with {threads} threads: {bandwidth_gbs:.1f} GB/s read bandwidth, "
        f"{compute_gflops:.1f} GFLOP/s FP32 (onnxruntime MatMul).",
        "Calibration: each graph reaches the same fraction of the device's roofline as it does of this "
        "machine's (efficiency = roofline here / its measured time per call inside the streaming loop here), "
        "on the same backend.",
        f"A device sustains {SUSTAINED:.0%} of its theoretical peak DRAM bandwidth and FP32 FLOP/s, using all "
        "CPU cores at their listed clocks (no thermal throttling); quantized kernels are costed at the FP32 "
        "compute peak; NPUs are listed but not used.",
        "Per frame: lm_step + depth_step x codebooks + codec_decoder / frames_per_call; host-loop time "
        "(sampling in Python) is left out of the device projection.",
        f"Memory: graph files + state tensors must fit in {APP_RAM_SHARE:.0%} of the device's RAM.",
    ]


def roofline_ms(nbytes: float, flops: float | None, bandwidth_gbs: float, gflops: float) -> float:
    """Lower bound on one call in ms; without a FLOP count only the bandwidth term is used."""
    t = nbytes / (bandwidth_gbs * 1e9)
    if flops:
        t = max(t, flops / (gflops * 1e9))
    return 1000 * t


def project(graphs: dict[str, dict[str, Any]], model: dict[str, Any], model_bytes: int, device: Device,
            backend: str) -> dict[str, Any]:
    """Project one profiled bundle/backend onto `device`.

    `graphs[name]` needs `bytes_per_call`, `flops_per_call` and `efficiency` (from this machine).
    """
    bw, gflops = device.bandwidth_gbs * SUSTAINED, device.peak_gflops * SUSTAINED
    ms = {name: roofline_ms(g["bytes_per_call"], g["flops_per_call"], bw, gflops) / g["efficiency"]
          for name, g in graphs.items()}
    k, fpc = model["num_codebooks"], model["frames_per_call"]
    split = {"lm": ms["lm_step"], "depth": k * ms["depth_step"], "codec": ms["codec_decoder"] / fpc}
    per_frame = sum(split.values())
    budget = 1000 / model["frame_rate"]
    ram = device.ram_gb * 1e9
    return {
        "estimate": True,
        "label": LABEL,
        "device": device.name,
        "backend_offered": backend in device.backends,
        "graph_ms": ms,
        "per_frame_ms": per_frame,
        "per_frame_split_ms": split,
        "frame_budget_ms": budget,
        "rtf": per_frame / budget,
        "real_time": per_frame < budget,
        "first_audio_ms": ms["lm_prefill"] + k * ms["depth_step"] + ms["codec_decoder"],
        "memory_bytes": model_bytes,
        "ram_bytes": ram,
        "memory_share_of_ram": model_bytes / ram,
        "fits_in_ram": model_bytes <= APP_RAM_SHARE * ram,
    }
