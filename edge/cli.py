"""The `edge` command line. Every command mirrors a Python API call; errors are one line, exit 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from edge import __version__
from edge.errors import EdgeError
from edge.presets import DEFAULT_PRESET, PRESETS

app = typer.Typer(
    name="edge",
    help="Export, quantize, run and profile neural-codec language-model TTS (CSM + Mimi) for on-device use.\n\n"
    "Typical flow: `edge export csm-tiny --out voice` writes a bundle; `edge speak 'Hello' --bundle voice "
    "--out hello.wav` speaks with it; `edge quantize voice --recipe int8 --out voice-int8` makes it smaller; "
    "`edge profile voice` measures it here and projects it onto the devices of `edge devices`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
err = Console(stderr=True, soft_wrap=True)  # one message, one line: no wrapping at 80 columns
_debug = False
_NOISY = ("torch", "torchao", "executorch", "onnxscript", "onnx_ir", "transformers")


def _version(value: bool) -> None:
    if value:
        print(f"edge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    global _debug
    _debug = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if err.is_terminal:
        handler: logging.Handler = RichHandler(console=err, show_path=False)
    else:  # a log file or a pipe: one plain line per message, as a script reads them
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    if verbose < 2:
        # torch, torchao and executorch log import-time chatter (optional kernels, deprecations) that is
        # not about the user's run, and onnxruntime's quantizer advice goes to the root logger; keep stderr
        # to what edge has to say.
        handler.addFilter(lambda r: r.levelno >= logging.ERROR or not (
            r.name.startswith(_NOISY) or f"{os.sep}onnxruntime{os.sep}quantization{os.sep}" in r.pathname))
        logging.getLogger("torch.utils._pytree").addFilter(lambda r: r.levelno >= logging.ERROR)
        warnings.filterwarnings("ignore")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=float))


@app.command()
def export(
    preset: Annotated[str, typer.Argument(help=f"Preset to export: {', '.join(PRESETS)}.")] = DEFAULT_PRESET,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")] = Path("bundle"),
    backend: Annotated[str, typer.Option(help="onnx, executorch, torch (eager reference weights), a comma list, "
                                              "or all (those three); also qnn (with an npu --recipe) and coreml "
                                              "(ExecuTorch lowered to Core ML).")] = "onnx",
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Local Hugging Face checkpoint dir (config.json, safetensors, tokenizer.json)."),
    ] = None,
    prompt_capacity: Annotated[int | None, typer.Option(help="Max prompt tokens (static prefill shape).")] = None,
    kv_capacity: Annotated[int | None, typer.Option(help="Backbone KV-cache positions: prompt + frames.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Quantize as part of the export, e.g. int8 or "
                                                    "lm=int4,depth=int8,codec=fp16 (see `edge quantize`).")] = None,
    group_size: Annotated[int, typer.Option(help="int4 group size, with --recipe.")] = 32,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it is an edge bundle (or empty).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")] = False,
) -> None:
    """Export a preset (or a checkpoint) into a bundle of codec and LM graphs with explicit state.

    Each graph is checked against the eager reference before the bundle is written; a failed
    export leaves nothing behind. `--force` replaces only an edge bundle (or an empty directory),
    never the checkpoint or a directory holding it.
    """
    from edge.api import export as api_export

    with _progress(as_json) as progress:
        task = progress.add_task("export", total=None)
        bundle = api_export(preset, out, backend, checkpoint, prompt_capacity, kv_capacity, recipe, group_size, force,
                            on_step=lambda d: progress.update(task, description=d))
    if as_json:
        from edge.api import summary

        _print_json(summary(bundle))
    else:
        err.print(f"wrote [bold]{bundle.root}[/] ({', '.join(bundle.backends())}); see `edge inspect {bundle.root}`")


def _progress(quiet: bool):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                    transient=True, disable=quiet or not err.is_terminal)  # a non-terminal gets no spinner


@app.command()
def quantize(
    bundle_dir: Annotated[Path, typer.Argument(metavar="BUNDLE", help="fp32 bundle to quantize.")],
    recipe: Annotated[str, typer.Option(help="One recipe for every graph (fp32, fp16, int8, int4, npu-int8, "
                                             "npu-a16w8) or per graph group: lm=int4,depth=int8,codec=int8.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New bundle directory.")],
    group_size: Annotated[int, typer.Option(help="int4 group size along the input dimension.")] = 32,
    backend: Annotated[str | None, typer.Option(help="Keep only this backend's graphs (onnx or executorch); "
                                                     "default: every one the bundle has.")] = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure what it cost against the input "
                                                                      "bundle and print it.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it is an edge bundle (or empty).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the evaluation as JSON.")] = False,
    qnn_soc: Annotated[list[str] | None, typer.Option(
        help="With an npu recipe: also precompile each graph's QNN context for this Snapdragon SoC (repeatable; "
             "SM8550, SM8650, SM8750, SM7550, SC8380XP); `EDGE_QNN_SOC=SM8650 edge speak --backend qnn` loads it."
    )] = None,
) -> None:
    """Quantize each graph of a bundle with its own recipe (codec convs and LM matmuls react differently)."""
    from edge.api import quantize as api_quantize

    backends = [backend] if backend else None
    with _progress(as_json) as progress:
        task = progress.add_task("quantize", total=None)
        bundle = api_quantize(bundle_dir, recipe, out, group_size, backends, force,
                              on_step=lambda d: progress.update(task, description=d), qnn_socs=qnn_soc or ())
    err.print(f"wrote [bold]{bundle.root}[/]: " + ", ".join(f"{n}={g['recipe']}" for n, g in bundle.graphs.items()))
    if evaluate:
        _eval_and_print(bundle.root, bundle_dir, (backend or bundle.backends()[0]), as_json)


def _eval_and_print(bundle_dir: Path, against: Path, backend: str, as_json: bool, frames: int = 20) -> None:
    from edge.api import evaluate

    report = evaluate(bundle_dir, against, backend, frames)
    if as_json:
        _print_json(report)
    else:
        Console().print_json(json.dumps(report, default=float))


@app.command("eval")
def eval_(
    bundle_dir: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Quantized bundle.")],
    against: Annotated[Path, typer.Option(help="The fp32 bundle it came from.")],
    backend: Annotated[str, typer.Option(help="onnx, executorch or qnn (the quantized bundle on the HTP, against "
                                              "the fp32 one's onnx graphs on the CPU).")] = "onnx",
    frames: Annotated[int, typer.Option(help="Frames of greedy audio to compare.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Measure what quantization cost: codec SNR / log-mel, LM and depth top-1 + KL, identical frames, size, speed."""
    _eval_and_print(bundle_dir, against, backend, as_json, frames)


@app.command()
def inspect(
    bundle_dir: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
    qnn: Annotated[bool, typer.Option("--qnn", help="Also load each onnx graph on the QNN HTP (CPU fallback "
                                                    "allowed) and show what it takes (needs the qnn extra).")] = False,
) -> None:
    """Validate a bundle (schema, version, paths, sha256 of every file, each graph file's inputs and outputs)
    and show its graphs, with what an accelerator backend delegates (coreml: recorded at export; qnn: measured
    with --qnn)."""
    from edge.api import inspect as api_inspect

    info = api_inspect(bundle_dir, qnn=qnn)
    if as_json:
        _print_json(info)
        return
    out = Console()
    m = info["model"]
    out.print(f"[bold]{info['bundle']}[/]: {info['family']} / {info['preset']}, format {info['format_version']}, "
              f"backends {', '.join(info['backends'])}: OK (all sha256 match, graphs as declared)")
    out.print(", ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, (dict, list))))
    if info["sampling"]:
        out.print("recommended sampling (speak's default): "
                  + ", ".join(f"{k}={v}" for k, v in info["sampling"].items()))
    table = Table("graph", "recipe", "bytes", "inputs", "outputs", "state")
    # A written state (a KV cache) shows where a call's new entries go: "written at <index output>[axis]".
    fmt = lambda ts: "\n".join(  # noqa: E731
        f"{t['name']} {t['dtype']}{t['shape']}"
        + (f" written at {t['write']['index']}[axis {t['write']['axis']}]" if t.get("write") else "") for t in ts)
    for name, g in info["graphs"].items():
        sizes = "\n".join(f"{b}: {n:,}" for b, n in g["bytes"].items())
        table.add_row(name, g["recipe"], sizes, fmt(g["inputs"]), fmt(g["outputs"]), fmt(g["state"]))
    out.print(table)
    for backend, what in (("coreml", "ops inside Core ML"), ("qnn", "operators on the HTP")):
        rows = {n: g["delegation"][backend] for n, g in info["graphs"].items() if backend in g.get("delegation", {})}
        if rows:
            out.print(f"{backend} delegation ({what}): " + ", ".join(
                f"{n} {d.get('delegated_ops', d.get('on_htp'))}/{d.get('total_ops', d.get('ops'))} "
                f"({100 * d['fraction']:.1f}%)" for n, d in rows.items()))


@app.command()
def speak(
    text: Annotated[str | None, typer.Argument(
        metavar="TEXT", show_default=False, help="Text to speak, any length; '-' reads it from stdin.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the text from this UTF-8 file ('-': "
                                              "standard input) instead.")] = None,
    pause: Annotated[float, typer.Option(help="Seconds of silence between sentences.")] = 0.3,
    max_chars: Annotated[int, typer.Option(help="Split a longer sentence at clauses (then words) into chunks of "
                                                "at most this many characters; 0: as long as the prompt holds.")] = 80,
    bundle_dir: Annotated[Path | None, typer.Option("--bundle", "-b", help="Bundle to speak with (default: the "
                                                    f"{DEFAULT_PRESET} preset, exported on first use).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="WAV file to write ('-': stdout; a FIFO or device "
                                                         "is written as a stream).")] = None,
    stream: Annotated[
        bool,
        typer.Option("--stream", help="Write raw 16-bit mono PCM to stdout as it is decoded "
                     "(pipe it into a player: | aplay -r 24000 -f S16_LE -c 1)."),
    ] = False,
    backend: Annotated[str, typer.Option(help="onnx, qnn (an npu-quantized bundle on the Snapdragon HTP), "
                                              "executorch, coreml (Apple hardware) or torch.")] = "onnx",
    speaker: Annotated[int, typer.Option(help="Speaker id.")] = 0,
    temperature: Annotated[float | None, typer.Option(
        help="Sampling temperature; 0 = greedy. Default: what the voice recommends (edge inspect), else 0.9.",
        show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option(
        help="Keep the k most likely tokens; 0 = off. Default: the voice's, else 50.", show_default=False)] = None,
    top_p: Annotated[float | None, typer.Option(
        help="Nucleus sampling mass; 1 = off. Default: the voice's, else 1.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    max_seconds: Annotated[float, typer.Option(help="Stop a sentence (each chunk of a long text) after this "
                                                    "much audio; one that gets there is reported.")] = 10.0,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per graph, at most this machine's cores (default: all cores; one for ONNX graphs under "
             "8 MB).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out even if it is not a WAV or lies inside a "
                                                        "bundle.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print timing and run facts as JSON, with each chunk's text, start time "
                           "and frames (to stderr with --stream).")
    ] = False,
) -> None:
    """Speak TEXT with a bundle: streaming decode, audio out chunk by chunk as frames decode.

    Any length: a long text (or `--file`) is split at sentences (then clauses, then words) into chunks that
    fit the voice's prompt, spoken in turn as one stream with `--pause` between sentences.

    `--out` replaces an existing WAV whole once the audio is complete (nothing is written if the run
    fails); it never replaces a file that is not a WAV, or one inside a bundle, without `--force`.
    """
    from edge.api import speak as api_speak

    if text is None and file is None:
        raise EdgeError("no text to speak; give TEXT, '-' for standard input, or --file PATH")
    if out is None and not stream:
        raise EdgeError("nowhere to put the audio; give --out FILE.wav and/or --stream")
    if stream and out is not None and str(out) == "-":
        raise EdgeError("--stream and --out - both write to stdout; choose one")
    if text == "-":
        text, file = None, Path("-")
    elif text is not None:
        text = _decoded(text)
    sink = sys.stdout.buffer if stream else None
    result = api_speak(text, bundle=bundle_dir, out=out, pcm_sink=sink, backend=backend, speaker=speaker,
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_seconds=max_seconds,
                       threads=threads, force=force, file=file, pause=pause, max_chars=max_chars or None)
    to_stdout = stream or (out is not None and str(out) == "-")
    if as_json:
        (err.print_json if to_stdout else _print_json)(json.dumps(result, default=float) if to_stdout else result)
    elif not to_stdout:
        s = result["stats"]
        err.print(f"wrote {out}: {s['audio_seconds']:.2f} s of audio, first audio {1000 * s['first_audio']:.0f} ms, "
                  f"RTF {s['rtf']:.3f} ({backend})" + (f", {s['chunks']} chunks" if s["chunks"] > 1 else ""))


@app.command()
def batch(
    input_file: Annotated[Path, typer.Argument(metavar="INPUT", help="Text file (one utterance a line) or JSONL "
                                               "(text; optional id, speaker, seed); '-' reads standard input.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for one WAV per item and manifest.jsonl "
                                      "(created; a rerun resumes).")],
    bundle_dir: Annotated[Path | None, typer.Option("--bundle", "-b", help="Bundle to speak with (default: the "
                                                    f"{DEFAULT_PRESET} preset, exported on first use).")] = None,
    backend: Annotated[str, typer.Option(help="onnx, executorch or torch.")] = "onnx",
    workers: Annotated[int, typer.Option("--workers", "-j", help="Worker processes (or Ray actors), each loading "
                                         "the voice once.")] = 1,
    threads: Annotated[int, typer.Option(help="CPU threads per graph in each worker. WAVs are byte-identical for "
                                              "any --workers at the same --threads.")] = 1,
    ray: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help="Run the workers as actors on a Ray "
                                            "cluster: its address, 'auto' (the one this machine is in) or 'local' "
                                            "(start one here). Needs the cluster extra.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature; 0 = greedy. Default: the "
                                                           "voice's.", show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option(help="Default: the voice's.", show_default=False)] = None,
    top_p: Annotated[float | None, typer.Option(help="Default: the voice's.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of every item without its own 'seed'.")] = 0,
    max_seconds: Annotated[float, typer.Option(help="Stop a sentence after this much audio.")] = 10.0,
    pause: Annotated[float, typer.Option(help="Seconds of silence between an item's sentences.")] = 0.3,
    max_chars: Annotated[int, typer.Option(help="Split a longer sentence into chunks of at most this many "
                                                "characters; 0: as long as the prompt holds.")] = 80,
    fmt: Annotated[str, typer.Option("--format", help="auto (JSONL for .jsonl/.ndjson or lines starting with '{'), "
                                     "text or jsonl.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (no progress bar).")] = False,
) -> None:
    """Speak many texts: one WAV per line of INPUT into --out, with DIR/manifest.jsonl (id, path, seconds,
    frames, sha256, timings).

    Resumable: a rerun skips items already complete (WAV and manifest row); every file is written atomically,
    so a killed run loses only the items in flight. A bad line is reported with its line number and skipped;
    the exit status is 2 when any line was skipped.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from edge.api import batch as api_batch

    columns = (TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn(), TextColumn("{task.fields[speed]}"))
    bar = Progress(*columns, console=err, transient=True, disable=as_json)
    task = bar.add_task("batch", total=None, speed="")

    def show(p) -> None:
        if not bar.live.is_started:
            bar.start()  # at the first item, after the input and the flags have been checked
        bar.update(task, total=p.total, completed=p.done + p.failed,
                   speed=f"{p.speed:.2f} audio s/s" + (f", {p.failed} failed" if p.failed else ""))

    try:
        result = api_batch(input_file, out, bundle=bundle_dir, backend=backend, workers=workers, threads=threads,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_seconds=max_seconds,
                           pause=pause, max_chars=max_chars or None, fmt=fmt, ray=ray, on_progress=show)
    finally:
        if bar.live.is_started:
            bar.stop()
    if as_json:
        _print_json(result)
    else:
        err.print(f"{result['out']}: {result['spoken']} spoken, {result['skipped']} already there, "
                  f"{len(result['errors'])} skipped as bad; {result['audio_seconds']:.1f} s of audio in "
                  f"{result['seconds']:.1f} s ({result['speed']:.2f} audio s/s, {workers} worker"
                  f"{'s' if workers > 1 else ''}{' on Ray' if ray else ''})", highlight=False)
        if result["runaways"]:
            err.print(f"  {len(result['runaways'])} items have a chunk that hit its frame limit without ending (their "
                      "manifest rows list them under 'runaways'), e.g. " + ", ".join(result["runaways"][:5]),
                      highlight=False, soft_wrap=True)
        for e in result["errors"]:
            err.print(f"  line {e['line']}: {e['error']}", highlight=False, soft_wrap=True)
    if result["errors"]:
        sys.exit(2)  # the bad lines are input errors; every other item is complete


def _decoded(text: str | bytes) -> str:
    """Text from argv (undecodable bytes arrive as surrogates) or stdin (bytes) as checked UTF-8."""
    try:
        return text.decode("utf-8") if isinstance(text, bytes) else text.encode("utf-8").decode("utf-8")
    except UnicodeError:
        raise EdgeError("text is not UTF-8; give UTF-8 text (e.g. convert it with iconv -t UTF-8)") from None


@app.command()
def devices(
    name: Annotated[str | None, typer.Argument(help="Show one device's facts with their sources, and which bundle "
                                                    "to build for it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue (facts and sources) as JSON.")] = False,
) -> None:
    """List the device catalogue: the facts that bound speed (memory bandwidth, cores, RAM, NPU, backends).

    Every fact carries its public source; derived figures (peak GFLOP/s = cores x clock x FLOPs per
    cycle, bandwidth = transfer rate x bus width) say how they were derived. `edge devices NAME` also says
    which bundle to build for that device (its NPU path: qnn with the SoC, coreml with the chip, or the CPU).
    `edge profile --device NAME` projects a bundle onto one of them.
    """
    from edge.api import devices as api_devices

    if name is not None:
        device = api_devices(name)
        if as_json:
            _print_json(device)
            return
        console = Console()
        console.print_json(json.dumps(device["facts"]))
        build = device["build"]
        console.print(f"[bold]Build for {device['name']}[/] (backend {build['backend']}): {build['why']}")
        for command in build["commands"]:
            console.print(f"  {command}", highlight=False, markup=False, soft_wrap=True)
        return
    catalogue = api_devices()
    if as_json:
        _print_json(catalogue)
        return
    table = Table("device", "DRAM\nGB/s", "cores", "FP32 GFLOP/s\n(derived)", "RAM\nGB", "NPU\nTOPS", "NPU path",
                  title="Device catalogue (facts, sources and what to build: edge devices NAME)")
    for d in catalogue:
        npu = "-" if d["npu"] is None else str(d["npu"]["tops"] or "n/a")
        path = d["npu_path"]
        route = "-" if path is None else f"{path['backend']} {path.get('soc') or path.get('chip')}"
        table.add_row(d["name"], f"{d['memory_bandwidth_gbs']:g}", str(d["cores"]), f"{d['peak_fp32_gflops']:.0f}",
                      f"{d['ram_gb']:g}", npu, route)
    Console().print(table)


@app.command()
def profile(
    bundles: Annotated[list[Path], typer.Argument(metavar="BUNDLE...", help="Voice bundle(s) to profile.")],
    compare: Annotated[bool, typer.Option("--compare", help="Put several bundles side by side (e.g. fp32, int8, "
                                                            "int4 of the same voice).")] = False,
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Catalogued device to project onto "
                                                     "(repeat for several; default: all, see `edge devices`).")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="onnx or executorch (repeat for both; default: onnx "
                                                           "when the bundle has it).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per graph (default: as speak runs them: all "
                                                     "cores, one for ONNX graphs under 8 MB).")] = None,
    frames: Annotated[int, typer.Option(help="Frames of audio to speak for the per-frame numbers.")] = 25,
    repeats: Annotated[int, typer.Option(help="Timed calls per graph (after warm-up).")] = 20,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report (index.html + "
                                                     "profile.json) into this directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """Measure a voice bundle on this machine, per graph and per frame, and project it onto devices.

    Measured here: each graph's file and parameter size, latency per call (median, p90) alone and
    inside the streaming loop, the per-frame split (lm, depth loop, codec, host), time to first
    audio, real-time factor, peak resident memory, and the operators that dominate (onnxruntime
    profiler, ExecuTorch ETDump). Projected per catalogued device: each graph's latency from a
    roofline model calibrated on this machine, whether the voice keeps up with real time, and
    whether it fits in memory. Projections are ESTIMATES and print their assumptions.
    """
    from edge.api import profile as api_profile

    if compare and len(bundles) < 2:
        raise EdgeError("--compare needs at least two bundles, e.g. edge profile --compare voice voice-int8")
    if not compare and len(bundles) > 1:
        raise EdgeError(f"got {len(bundles)} bundles; pass --compare to put several side by side")
    with _progress(as_json) as progress:
        task = progress.add_task("profile", total=None)
        result = api_profile(bundles, device, backend, threads, frames, repeats, report,
                             on_step=lambda d: progress.update(task, description=d))
    if as_json:
        _print_json(result)
        return
    from edge.devices.render import print_compare, print_profile

    out = Console()
    print_compare(out, result) if compare else print_profile(out, result)
    if report is not None:
        err.print(f"wrote [bold]{result['report']}[/]")


def _fail(message: str, code: int = 2) -> None:
    err.print(message, highlight=False, soft_wrap=True, markup=False)
    sys.exit(code)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2, an interrupt into
    one line and 130."""
    # A plain SIGTERM (a job scheduler, `kill`) would end Python without unwinding, leaving half-written
    # bundles and WAVs behind; as SystemExit it unwinds through the writers' cleanup like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        code = app(standalone_mode=False)
    except EdgeError as e:
        if _debug:
            traceback.print_exc()
        _fail(f"error: {e}")
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted; nothing was left half-written", 130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors: unknown option, missing argument, a value it cannot parse
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        _fail(f"error: {' '.join(e.format_message().split()).rstrip('.')}{hint}", e.exit_code or 2)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # the machine, not edge: a full disk, a missing permission
        if _debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        hint = {errno.ENOSPC: "free some disk space", errno.EACCES: "check the permissions",
                errno.EROFS: "write somewhere writable"}.get(e.errno, "check the path")
        _fail(f"error: {e.strerror or e}{where}; {hint} and retry")
    except Exception as e:  # a bug, not a user error: still one line unless --debug
        if _debug:
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)
    # typer turns Ctrl-C inside a command into Exit(130), which standalone_mode=False returns instead of raising
    if isinstance(code, int) and code != 0:
        if code == 130:
            _fail("interrupted; nothing was left half-written", 130)
        sys.exit(code)
