"""NPU measurements: the qnn backend (Snapdragon HTP, emulated on x86 by onnxruntime-qnn) and the coreml backend.

    python benchmarks/npu.py --preset csm-tiny --work-dir /tmp/npu-bench [--coreml] [--soc SM8650] [--json out.json]

For each npu recipe (npu-int8, npu-a16w8) of the preset's fp32 onnx bundle:
- load: seconds to create each graph's QNN session (prepare + finalize the Hexagon graph; the emulator's
  compile time, not a phone's), median of 5; with --soc, also from the contexts precompiled for that SoC;
- coverage: operators on the HTP with CPU fallback allowed (`qnn_coverage`), per graph;
- same graphs, HTP against CPU: every graph call of a greedy 40-frame CPU run replayed on the HTP (teacher
  forced): logits top-1 agreement and SNR, codec audio SNR; then the HTP's own greedy run against the CPU's
  (codes agreement over 40 frames, first differing frame);
- against fp32: `edge eval --backend qnn` (the quantized bundle on the HTP, the fp32 one's onnx graphs on the CPU).
With --coreml, the preset's coreml export: delegated ops per graph. No speed is reported: the emulator's speed
says nothing about a phone's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import numpy as np

from edge.bundle import load_bundle
from edge.export.build import export_bundle
from edge.quantize import evaluate, quantize_bundle
from edge.runtime.loop import Voice
from edge.runtime.metrics import graph_agreement
from edge.runtime.qnn import qnn_coverage
from edge.runtime.sampler import SamplingConfig
from edge.runtime.sessions import open_sessions

TEXT = "The quick brown fox jumps over the lazy dog."
GRAPHS = ("lm_prefill", "lm_step", "depth_step", "codec_decoder")
FRAMES = 40


def htp_against_cpu(root: Path) -> dict:
    """The same QDQ graphs on the HTP and on onnxruntime's CPU EP."""
    cpu_voice = Voice.load(root, "onnx")
    store = {n: [] for n in GRAPHS}
    cpu_voice.hooks.append(lambda graph, feeds, _s: store[graph].append({n: np.array(a) for n, a in feeds.items()}))
    greedy = SamplingConfig(temperature=0)
    seconds = FRAMES / cpu_voice.model["frame_rate"]
    ref = cpu_voice.stream(TEXT, sampling=greedy, max_seconds=seconds)
    list(ref)
    bundle = load_bundle(root)
    htp = open_sessions(bundle, "qnn", GRAPHS)
    graphs = {name: graph_agreement(cpu_voice.sessions[name], htp[name], store[name]) for name in GRAPHS}
    run = Voice(bundle, "qnn").stream(TEXT, sampling=greedy, max_seconds=seconds)
    list(run)
    a, b = np.array(ref.codes), np.array(run.codes)
    n = min(len(a), len(b))
    first = next((i for i in range(n) if not np.array_equal(a[i], b[i])), n)
    return {"teacher_forced": graphs, "greedy": {"frames": n, "code_agreement": float(np.mean(a[:n] == b[:n])),
                                                 "identical_frames": float(np.mean((a[:n] == b[:n]).all(1))),
                                                 "first_differing_frame": first}}


def load_seconds(root: Path, soc: str | None = None) -> dict[str, float]:
    """Median of 5 session loads per graph, compiled at load or (`soc`) from the precompiled context."""
    bundle = load_bundle(root)
    out = {}
    if soc:
        os.environ["EDGE_QNN_SOC"] = soc
    try:
        for name in GRAPHS:
            seconds = []
            for _ in range(5):
                t = time.perf_counter()
                open_sessions(bundle, "qnn", [name])
                seconds.append(time.perf_counter() - t)
                gc.collect()  # a compiled graph and its context do not run side by side in one process
            out[name] = round(float(np.median(seconds)), 3)
    finally:
        os.environ.pop("EDGE_QNN_SOC", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="csm-tiny")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/npu-bench"))
    ap.add_argument("--recipes", default="npu-int8,npu-a16w8")
    ap.add_argument("--coreml", action="store_true", help="also export the preset for coreml (delegation only)")
    ap.add_argument("--soc", help="also precompile QNN contexts for this SoC and time loading them")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    work = args.work_dir / args.preset
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32"
    if not (fp32 / "manifest.json").is_file():
        export_bundle(args.preset, fp32, ["onnx"], force=True)
    results: dict = {"preset": args.preset, "recipes": {}}
    for recipe in args.recipes.split(","):
        q = work / recipe
        if not (q / "manifest.json").is_file() or (args.soc and args.soc not in
                                                   load_bundle(q).graphs["lm_step"].get("qnn_context", {})):
            quantize_bundle(fp32, recipe, q, force=True, qnn_socs=[args.soc] if args.soc else ())
        bundle = load_bundle(q)
        r = {"load_seconds": load_seconds(q),
             **({"load_seconds_context": {"soc": args.soc, **load_seconds(q, args.soc)}} if args.soc else {}),
             "coverage": {n: qnn_coverage(str(bundle.graph_file(n, "qnn")), n) for n in GRAPHS},
             **htp_against_cpu(q)}
        against = evaluate(q, fp32, "qnn", FRAMES)
        r["against_fp32"] = {k: against[k] for k in ("lm", "depth", "greedy_identical_frames",
                                                     "greedy_first_divergence", "codec")}
        results["recipes"][recipe] = r
        print(json.dumps({recipe: r}, indent=1, default=float), flush=True)
    if args.coreml:
        cm = export_bundle(args.preset, work / "coreml", ["coreml"], force=True)
        results["coreml"] = {"lowering": cm.manifest["coreml"],
                             "delegation": {n: g["delegation"]["coreml"] for n, g in cm.graphs.items()}}
        print(json.dumps(results["coreml"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
