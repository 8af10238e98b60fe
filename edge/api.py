"""The Python API, and the one place that orchestrates a command: each function here is an `edge` command
(the CLI only parses and prints), with the same checks, so a script gets the same one-line `EdgeError`s.

    from edge.api import export, quantize, speak, profile
    export("csm-tiny", out="voice", backends="all")   # edge export csm-tiny --backend all --out voice
    quantize("voice", "int8", out="voice-int8")        # edge quantize voice --recipe int8 --out voice-int8
    speak("Hello there.", out="hello.wav")             # default voice, exported on first use
    batch("lines.txt", out="wavs", workers=2)          # one WAV per line + wavs/manifest.jsonl, resumable
    profile(["voice"], devices=["raspberry-pi-5"])    # edge profile voice --device raspberry-pi-5
    voice = Voice.load("voice", backend="onnx")        # or drive the stream yourself
    for chunk in voice.stream("Hello there."): ...
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import edge.export  # noqa: F401  (registers the torch backend with the runtime)
from edge import __version__
from edge.bundle import FORMAT_VERSION, Bundle, load_bundle
from edge.cache import cache_dir
from edge.errors import EdgeError
from edge.outputs import WavSink, check_audio_out, check_dir_out
from edge.presets import DEFAULT_PRESET, get_preset
from edge.runtime.audio import to_pcm16
from edge.runtime.loop import (
    DEFAULT_MAX_CHARS,
    DEFAULT_PAUSE,
    Voice,
    check_pause,
    check_seconds,
    check_text,
    check_voice,
)
from edge.runtime.sampler import SamplingConfig
from edge.runtime.sessions import check_threads
from edge.runtime.text import read_text

log = logging.getLogger(__name__)

__all__ = ["Voice", "SamplingConfig", "batch", "default_bundle", "devices", "evaluate", "export", "inspect", "profile",
           "quantize", "speak"]

Step = Callable[[str], None]


def _positive(flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise EdgeError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


def _path(flag: str, value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise EdgeError(f"{flag} must be a path, got {value!r}")
    return Path(value)


def default_bundle(preset: str = DEFAULT_PRESET, backend: str = "onnx") -> Path:
    """The cached bundle of a built-in preset for one backend, exported on first use (and again when the
    package's weights for it change: their digest is part of the name, or when the cached copy is broken)."""
    if backend == "qnn":
        raise EdgeError(f"the default voice is not built for the HTP; export one and pass it with --bundle: "
                        f"edge export {preset} --backend qnn --recipe npu-a16w8 --out voice-htp")
    if backend == "coreml":
        raise EdgeError(f"the default voice is not built for Core ML (which runs on Apple hardware only); export one "
                        f"and pass it with --bundle: edge export {preset} --backend coreml --out voice-coreml")
    digest = get_preset(preset).weights_digest()[:12]
    path = cache_dir() / "-".join(filter(None, (preset, __version__, f"f{FORMAT_VERSION}", digest, backend)))
    if path.exists():
        try:
            load_bundle(path)
            return path
        except EdgeError as e:
            log.warning("the cached %s voice at %s is broken (%s); exporting it again", preset, path, e)
            shutil.rmtree(path)  # edge's own cache entry, named by edge
    try:
        from edge.export.build import EXPORT_BACKENDS, export_bundle
    except ImportError as e:
        raise EdgeError(f"no --bundle given and the default voice needs exporting, which needs the export extra "
                        f"('{e.name}' missing): pip install 'edge-codec-tts[export]', or pass --bundle") from None
    if backend not in EXPORT_BACKENDS:
        raise EdgeError(f"unknown backend '{backend}'; choose one of {', '.join(EXPORT_BACKENDS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("exporting the %s preset to %s (first use only)", preset, path)
    export_bundle(preset, path, [backend], force=True)
    return path


def export(
    preset: str = DEFAULT_PRESET,
    out: str | Path = "bundle",
    backends: str | Sequence[str] = "onnx",
    checkpoint: str | Path | None = None,
    prompt_capacity: int | None = None,
    kv_capacity: int | None = None,
    recipe: str | None = None,
    group_size: int = 32,
    force: bool = False,
    on_step: Step | None = None,
) -> Bundle:
    """Export a preset (or a local checkpoint) into a bundle, quantized with `recipe` if given (`edge export`).

    `backends`: "onnx", "executorch", "torch", a comma list, a list, or "all". Every graph is checked against
    the eager reference before the bundle is written; a failed export leaves nothing behind.
    """
    from edge.export.build import export_bundle, parse_backends

    step = on_step or (lambda _: None)
    out = _path("--out", out)
    ckpt = None if checkpoint is None else _path("--checkpoint", checkpoint)
    if ckpt is not None and not ckpt.is_dir():
        raise EdgeError(f"--checkpoint '{ckpt}' is not a directory; give a local Hugging Face checkpoint directory")
    options = {k: _positive(f"--{k.replace('_', '-')}", v)
               for k, v in {"prompt_capacity": prompt_capacity, "kv_capacity": kv_capacity}.items() if v is not None}
    chosen = parse_backends(backends if isinstance(backends, str) else ",".join(backends))
    if "qnn" in chosen:
        from edge.quantize.recipes import NPU_RECIPES, parse_recipe

        if recipe is None or any(r not in NPU_RECIPES for r in parse_recipe(recipe).values()):
            raise EdgeError("the qnn backend runs graphs quantized for the HTP: add --recipe npu-a16w8 (or npu-int8)")
    protect = [ckpt] if ckpt is not None else []
    check_dir_out(out, force, protect=protect)  # before the slow export
    if recipe is None:
        return export_bundle(preset, out, chosen, ckpt, options, force, on_step=step)
    from edge.quantize import parse_recipe, quantize_bundle
    from edge.quantize.recipes import check_group_size

    parse_recipe(recipe)  # refuse a bad recipe before the slow export
    check_group_size(group_size)
    if "executorch" in chosen and "torch" not in chosen:
        chosen.append("torch")  # ExecuTorch quantization starts from the torch reference
    # The fp32 bundle is built in a hidden sibling of --out that a killed run's successor cleans up.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent) as tmp:
        fp32 = export_bundle(preset, Path(tmp) / "fp32", chosen, ckpt, options, on_step=step)
        return quantize_bundle(fp32.root, recipe, out, group_size, force, on_step=step)


def quantize(
    bundle: str | Path,
    recipe: str,
    out: str | Path,
    group_size: int = 32,
    backends: Sequence[str] | None = None,
    force: bool = False,
    on_step: Step | None = None,
    qnn_socs: Sequence[str] = (),
) -> Bundle:
    """Quantize each graph of `bundle` with its own recipe into a new bundle `out` (`edge quantize`); with an
    npu recipe, `qnn_socs` also precompiles each graph's QNN context for those Snapdragon SoCs."""
    from edge.quantize import quantize_bundle

    if not isinstance(recipe, str):
        raise EdgeError(f"--recipe must be text such as int8 or lm=int4,depth=int8, got {recipe!r}")
    return quantize_bundle(_path("BUNDLE", bundle), recipe, _path("--out", out), group_size, force,
                           on_step=on_step or (lambda _: None), backends=backends, qnn_socs=qnn_socs)


def evaluate(bundle: str | Path, against: str | Path, backend: str = "onnx", frames: int = 20) -> dict[str, Any]:
    """What quantization cost, `bundle` against the fp32 bundle it came from (`edge eval`)."""
    from edge.quantize import evaluate as _evaluate

    if backend not in ("onnx", "executorch", "qnn"):
        raise EdgeError(f"--backend must be onnx, executorch or qnn, got {backend!r}")
    return _evaluate(_path("BUNDLE", bundle), _path("--against", against), backend, _positive("--frames", frames))


def summary(bundle: Bundle) -> dict[str, Any]:
    """A bundle's manifest as `edge inspect --json` prints it: graphs with their bytes per backend."""
    return {
        "bundle": str(bundle.root),
        "family": bundle.family,
        "preset": bundle.manifest["preset"],
        "format_version": bundle.manifest["format_version"],
        "backends": bundle.backends(),
        "model": bundle.model,
        "sampling": bundle.manifest.get("sampling", {}),
        "graphs": {
            name: {**g, "bytes": {b: bundle.file_bytes(name, b) for b in g["files"]}}
            for name, g in bundle.graphs.items()
        },
    }


def inspect(bundle: str | Path, qnn: bool = False) -> dict[str, Any]:
    """Validate a bundle whole (schema, version, paths, sha256, and that every graph file parses with the
    inputs and outputs the manifest declares) and summarize it (`edge inspect`). With `qnn`, also load each
    onnx graph on the QNN HTP (CPU fallback allowed) and record per graph what it takes."""
    from edge.runtime.sessions import check_graph_files

    loaded = load_bundle(_path("BUNDLE", bundle))
    if loaded.family == "csm":
        check_voice(loaded)
    check_graph_files(loaded)
    info = summary(loaded)
    if qnn:
        from edge.runtime.qnn import qnn_coverage

        loaded.require_backend("qnn")
        for name, g in info["graphs"].items():
            g.setdefault("delegation", {})["qnn"] = qnn_coverage(str(loaded.graph_file(name, "qnn")), name)
    return info


def speak(
    text: str | None = None,
    bundle: str | Path | None = None,
    out: str | Path | None = None,
    pcm_sink: BinaryIO | None = None,
    backend: str = "onnx",
    speaker: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_seconds: float = 10.0,
    threads: int | None = None,
    force: bool = False,
    file: str | Path | None = None,
    pause: float = DEFAULT_PAUSE,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> dict[str, Any]:
    """Speak `text` (or the UTF-8 text `file`, `-` for stdin): a WAV to `out` and/or raw 16-bit PCM chunks to
    `pcm_sink`, as they decode (`edge speak`).

    A text of any length is spoken sentence by sentence as one stream, `pause` seconds between sentences; a
    sentence longer than `max_chars` (None: than the prompt holds) is split at clauses, then words.
    `max_seconds` bounds each chunk. `out` may be a file (written whole or not at all), "-" for stdout, or a
    FIFO or device (written as a stream); an existing file that is not a WAV or lies inside a bundle is replaced
    only with `force`. `temperature`, `top_k` and `top_p` left out take the voice's recommended sampling (its
    manifest's ``sampling``), else `SamplingConfig`'s defaults. Returns the run's facts and timings (`edge speak
    --json`), with one record per chunk (text, start, frames) and a warning for each chunk that hit its frame
    limit without ending.
    """
    if (text is None) == (file is None):
        raise EdgeError("give the text to speak or a --file to read it from (one of them)")
    if file is not None:
        text = read_text(file)
    check_text(text)
    check_threads(threads)
    check_seconds(max_seconds)
    if out is not None:
        inputs = [Path(p) for p in (bundle, file) if p is not None and str(p) != "-"]
        check_audio_out(_path("--out", out), force, protect=inputs)  # before any export
    flags = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    SamplingConfig().override(**flags)  # a bad flag fails before any export
    voice = Voice.load(bundle if bundle is not None else default_bundle(backend=backend), backend, threads)
    sampling = voice.sampling.override(**flags)
    stream = voice.stream(text, speaker, sampling, max_seconds, pause, max_chars=max_chars)
    sink = WavSink(out, voice.sample_rate, force) if out is not None else None
    samples = 0
    try:
        for chunk in stream:
            pcm = to_pcm16(chunk)
            samples += chunk.size
            if sink is not None:
                sink.write(pcm)
            if pcm_sink is not None:
                pcm_sink.write(pcm)
                pcm_sink.flush()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is not None:
        sink.close()
    return {
        "text": text,
        "bundle": str(voice.bundle.root),
        "out": str(out) if out is not None else None,
        "sample_rate": voice.sample_rate,
        "samples": samples,
        "frames": stream.stats.frames,
        "sampling": asdict(sampling),
        "stats": stream.stats.to_json(),
        "chunks": [c.to_json() for c in stream.chunks],
        "warnings": [f"chunk {c.index + 1} of {len(stream.chunks)} hit its frame limit ({c.frames} frames) without "
                     f"ending: {c.text!r}" for c in stream.runaways()],
    }


def batch(
    input: str | Path,
    out: str | Path,
    bundle: str | Path | None = None,
    backend: str = "onnx",
    workers: int = 1,
    threads: int = 1,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_seconds: float = 10.0,
    pause: float = DEFAULT_PAUSE,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    fmt: str = "auto",
    ray: str | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Speak every line of `input` into `out` (`edge batch`): one WAV per item plus ``out/manifest.jsonl``.

    `input`: a text file (one utterance a line) or JSONL (``text``; optional ``id``, ``speaker``, ``seed``);
    `fmt` forces text or jsonl. Resumable: items already complete in `out` are skipped. `workers` processes (or
    Ray actors, with `ray` an address, ``auto`` or ``local``), each loading the voice once and running its graphs
    on `threads` threads: with a fixed seed the WAVs are byte-identical for any `workers` at the same `threads`.
    Bad lines and texts the voice refuses are skipped and listed in the result's ``errors`` with their line
    numbers. `on_progress` gets an `edge.runtime.batch.Progress` after each item. With `workers` > 1 the workers
    are spawned processes, so a script calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    from edge.runtime.batch import MANIFEST, Settings, connect_ray, prepare_out, read_items, run_batch

    out = _path("--out", out)
    if out.exists() and not out.is_dir():
        raise EdgeError(f"--out '{out}' is a file; give a directory for the WAVs and manifest.jsonl")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise EdgeError(f"--out '{out}' holds files but no {MANIFEST} of an edge batch; give a new or empty "
                        "directory (or the --out of the batch to resume)")
    _positive("--workers", workers)
    check_threads(threads)
    check_seconds(max_seconds)
    check_pause(pause)
    if max_chars is not None:
        _positive("--max-chars", max_chars)
    SamplingConfig().override(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    path = Path(bundle) if bundle is not None else default_bundle(backend=backend)
    loaded = load_bundle(path)
    check_voice(loaded)
    loaded.require_backend(backend)
    items, bad = read_items(input, loaded.model["speakers"], seed, fmt)
    settings = Settings(str(Path(loaded.root).resolve()), backend, threads, temperature, top_k, top_p, max_seconds,
                        pause, max_chars)
    bundle_sha = hashlib.sha256((Path(loaded.root) / "manifest.json").read_bytes()).hexdigest()
    if ray is not None:
        connect_ray(ray, workers * threads)
    result = run_batch(items, prepare_out(out), settings, bundle_sha, workers, ray, on_progress)
    result["bad_lines"] = len(bad)
    result["errors"] = sorted([{"line": b.line, "id": None, "error": b.message} for b in bad] + result["errors"],
                              key=lambda e: e["line"])
    return result


def devices(name: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
    """The device catalogue (what `edge devices --json` prints): each device's facts with their sources, its NPU
    path and the bundle to build for it (`build`); with `name`, that one device (`edge devices NAME --json`)."""
    from edge.devices.catalogue import get_device, load_catalogue

    if name is not None:
        return get_device(name).summary()
    return [d.summary() for d in load_catalogue().values()]


def profile(
    bundles: str | Path | list[str | Path],
    devices: list[str] | None = None,
    backends: list[str] | None = None,
    threads: int | None = None,
    frames: int = 25,
    repeats: int = 20,
    report: str | Path | None = None,
    on_step: Step | None = None,
) -> dict[str, Any]:
    """Profile one or more voice bundles here and project them onto catalogued devices (`edge profile`).

    `devices`: catalogue names (default: all). `report`: a directory for a self-contained HTML page.
    Returns what `edge profile --json` prints; projections are estimates and say so.
    """
    from edge.devices.catalogue import get_device, load_catalogue
    from edge.devices.profiler import profile as run_profile
    from edge.devices.report import check_report_dir, write_report

    check_threads(threads)
    _positive("--frames", frames)
    _positive("--repeats", repeats)
    chosen = [get_device(n) for n in devices] if devices else list(load_catalogue().values())
    if report is not None:
        check_report_dir(_path("--report", report))  # before the slow part
    paths = bundles if isinstance(bundles, list) else [bundles]
    result = run_profile(paths, chosen, backends, threads, frames, repeats, on_step)
    if report is not None:
        result["report"] = str(write_report(result, Path(report)))
    return result
