"""edge on macOS and Windows: the CLI's main paths with the Linux-only calls removed.

`os.sched_getaffinity` exists on Linux only; `os.process_cpu_count` from Python 3.13 on. Both are taken
away here, so a regression that calls either directly fails on this Linux machine too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edge.runtime.sampler import SamplingConfig


@pytest.fixture
def no_affinity(monkeypatch, tmp_path):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))  # the profile anchors are measured, not cached


def test_cpu_count_without_affinity(no_affinity):
    from edge.runtime.sessions import cpu_count, default_threads

    assert cpu_count() == default_threads() == max(1, os.cpu_count() or 1)


@pytest.mark.parametrize("backend", ["onnx", "executorch", "torch"])
def test_speak_without_affinity(no_affinity, tiny_bundle, backend):
    from edge.runtime.loop import Voice

    audio, stats = Voice.load(tiny_bundle, backend).synthesize("Hi.", sampling=SamplingConfig(temperature=0),
                                                               max_seconds=0.4)
    assert stats.frames > 0 and audio.size > 0 and np.isfinite(audio).all()


def test_cli_speak_and_profile_without_affinity(no_affinity, tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from edge.cli import app

    runner = CliRunner()
    wav = tmp_path / "hi.wav"
    r = runner.invoke(app, ["speak", "Hi.", "-b", str(tiny_bundle), "--backend", "torch", "--out", str(wav),
                            "--max-seconds", "0.4"])
    assert r.exit_code == 0, r.output
    assert wav.stat().st_size > 44
    r = runner.invoke(app, ["profile", str(tiny_bundle), "--frames", "2", "--repeats", "1", "--json",
                            "--device", "raspberry-pi-5"])
    assert r.exit_code == 0, r.output
