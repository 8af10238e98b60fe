"""The Python API; each function mirrors an `edge` command.

    from edge.api import speak, profile
    speak("Hello there.", out="hello.wav")            # default preset, exported on first use
    profile(["bundle"], devices=["raspberry-pi-5"])   # what `edge profile bundle --device raspberry-pi-5` measures
    batch("lines.txt", out="wavs", workers=2)         # one WAV per line + wavs/manifest.jsonl, resumable
    voice = Voice.load("bundle", backend="onnx")      # or drive the stream yourself
    for chunk in voice.stream("Hello there."): ...
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edge import __version__
from edge.bundle import FORMAT_VERSION
from edge.errors import EdgeError
from edge.presets import DEFAULT_PRESET, get_preset
from edge.runtime.audio import check_writable, to_pcm16, write_wav
from edge.runtime.loop import DEFAULT_MAX_CHARS, DEFAULT_PAUSE, Voice
from edge.runtime.sampler import SamplingConfig
from edge.runtime.text import read_text

log = logging.getLogger(__name__)

__all__ = ["Voice", "SamplingConfig", "batch", "default_bundle", "devices", "profile", "speak"]


def cache_dir() -> Path:
    base = os.environ.get("EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge"
    )
    return Path(base)


def default_bundle(preset: str = DEFAULT_PRESET, backend: str = "onnx") -> Path:
    """The cached bundle of a built-in preset for one backend, exported on first use (and again when the
    package's weights for it change: their digest is part of the name)."""
    digest = get_preset(preset).weights_digest()[:12]
    path = cache_dir() / "-".join(filter(None, (preset, __version__, f"f{FORMAT_VERSION}", digest, backend)))
    if (path / "manifest.json").is_file():
        return path
    try:
        from edge.export.build import EXPORT_BACKENDS, export_bundle
    except ImportError as e:
        raise EdgeError(f"no --bundle given and the default voice needs exporting, which needs the export extra "
                        f"('{e.name}' missing): pip install 'edge-codec-tts[export]', or pass --bundle") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    log.warning("exporting the %s preset to %s (first use only)", preset, path)
    if backend not in EXPORT_BACKENDS:
        raise EdgeError(f"unknown backend '{backend}'; choose one of {', '.join(EXPORT_BACKENDS)}")
    export_bundle(preset, path, [backend], force=True)
    return path


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
    file: str | Path | None = None,
    pause: float = DEFAULT_PAUSE,
    max_chars: int | None = DEFAULT_MAX_CHARS,
) -> dict[str, Any]:
    """Speak `text` (or the UTF-8 text `file`, `-` for stdin): write a WAV to `out` and/or raw 16-bit PCM chunks
    to `pcm_sink` as they decode.

    A text of any length is spoken sentence by sentence as one stream, `pause` seconds between sentences; a
    sentence longer than `max_chars` (None: than the prompt holds) is split at clauses, then words.
    `max_seconds` bounds each chunk. `temperature`, `top_k` and `top_p` left out take the voice's recommended
    sampling (its manifest's ``sampling``), else `SamplingConfig`'s defaults. Returns the run's facts and
    timings (what `edge speak --json` prints), with one record per chunk (text, start, frames) and a warning
    for each chunk that hit its frame limit without ending.
    """
    if (text is None) == (file is None):
        raise EdgeError("give the text to speak or a --file to read it from (one of them)")
    if file is not None:
        text = read_text(file)
    if out is not None:
        check_writable(out)
    flags = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    SamplingConfig().override(**flags)  # a bad flag fails before any export
    voice = Voice.load(bundle if bundle is not None else default_bundle(backend=backend), backend, threads)
    sampling = voice.sampling.override(**flags)
    stream = voice.stream(text, speaker, sampling, max_seconds, pause, max_chars=max_chars)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if pcm_sink is not None:
            pcm_sink.write(to_pcm16(chunk))
            pcm_sink.flush()
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if out is not None:
        write_wav(out, audio, voice.sample_rate)
    return {
        "text": text,
        "bundle": str(voice.bundle.root),
        "out": str(out) if out is not None else None,
        "sample_rate": voice.sample_rate,
        "samples": int(audio.size),
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
    from edge.bundle import load_bundle
    from edge.runtime.batch import Settings, connect_ray, prepare_out, read_items, run_batch

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgeError(f"--out '{out}' is a file; give a directory for the WAVs and manifest.jsonl")
    if workers < 1:
        raise EdgeError(f"--workers must be >= 1, got {workers}")
    if threads < 1:
        raise EdgeError(f"--threads must be >= 1, got {threads}")
    if not (max_seconds > 0 and np.isfinite(max_seconds)):
        raise EdgeError(f"--max-seconds must be a positive number, got {max_seconds}")
    if not (pause >= 0 and np.isfinite(pause)):
        raise EdgeError(f"--pause must be >= 0 seconds, got {pause}")
    if max_chars is not None and max_chars < 1:
        raise EdgeError(f"--max-chars must be >= 1, got {max_chars}")
    SamplingConfig().override(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    path = Path(bundle) if bundle is not None else default_bundle(backend=backend)
    loaded = load_bundle(path)
    if loaded.family != "csm":
        raise EdgeError(f"bundle {loaded.root} is a '{loaded.family}' codec bundle, not a voice; "
                        "export a TTS preset such as csm-tiny to speak")
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


def devices() -> list[dict[str, Any]]:
    """The device catalogue (what `edge devices --json` prints): each device's facts with their sources."""
    from edge.devices.catalogue import load_catalogue

    return [d.summary() for d in load_catalogue().values()]


def profile(
    bundles: str | Path | list[str | Path],
    devices: list[str] | None = None,
    backends: list[str] | None = None,
    threads: int | None = None,
    frames: int = 25,
    repeats: int = 20,
    report: str | Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Profile one or more voice bundles here and project them onto catalogued devices (`edge profile`).

    `devices`: catalogue names (default: all). `report`: a directory for a self-contained HTML page.
    Returns what `edge profile --json` prints; projections are estimates and say so.
    """
    from edge.devices.catalogue import get_device, load_catalogue
    from edge.devices.profiler import profile as run_profile
    from edge.devices.report import check_report_dir, write_report

    chosen = [get_device(n) for n in devices] if devices else list(load_catalogue().values())
    if report is not None:
        check_report_dir(Path(report))  # before the slow part
    paths = bundles if isinstance(bundles, list) else [bundles]
    result = run_profile(paths, chosen, backends, threads, frames, repeats, on_step)
    if report is not None:
        result["report"] = str(write_report(result, Path(report)))
    return result
