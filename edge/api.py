"""The Python API; each function mirrors an `edge` command.

    from edge.api import speak, profile
    speak("Hello there.", out="hello.wav")            # default preset, exported on first use
    profile(["bundle"], devices=["raspberry-pi-5"])   # what `edge profile bundle --device raspberry-pi-5` measures
    voice = Voice.load("bundle", backend="onnx")      # or drive the stream yourself
    for chunk in voice.stream("Hello there."): ...
"""

from __future__ import annotations

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
from edge.runtime.loop import Voice
from edge.runtime.sampler import SamplingConfig

log = logging.getLogger(__name__)

__all__ = ["Voice", "SamplingConfig", "default_bundle", "devices", "profile", "speak"]


def cache_dir() -> Path:
    base = os.environ.get("EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge"
    )
    return Path(base)


def default_bundle(preset: str = DEFAULT_PRESET, backend: str = "onnx") -> Path:
    """The cached bundle of a built-in preset for one backend, exported on first use (and again when the
    package's weights for it change: their digest is part of the name)."""
    if backend == "qnn":
        raise EdgeError(f"the default voice is not built for the HTP; export one and pass it with --bundle: "
                        f"edge export {preset} --backend qnn --recipe npu-a16w8 --out voice-htp")
    if backend == "coreml":
        raise EdgeError(f"the default voice is not built for Core ML (which runs on Apple hardware only); export one "
                        f"and pass it with --bundle: edge export {preset} --backend coreml --out voice-coreml")
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
    text: str,
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
) -> dict[str, Any]:
    """Speak `text`: write a WAV to `out` and/or raw 16-bit PCM chunks to `pcm_sink` as they decode.

    `temperature`, `top_k` and `top_p` left out take the voice's recommended sampling (its manifest's
    ``sampling``), else `SamplingConfig`'s defaults. Returns the run's facts and timings (what `edge speak
    --json` prints).
    """
    if out is not None:
        check_writable(out)
    flags = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    SamplingConfig().override(**flags)  # a bad flag fails before any export
    voice = Voice.load(bundle if bundle is not None else default_bundle(backend=backend), backend, threads)
    sampling = voice.sampling.override(**flags)
    stream = voice.stream(text, speaker, sampling, max_seconds)
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
    }


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
