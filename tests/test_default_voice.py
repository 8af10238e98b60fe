"""The default voice: `edge-voice`'s weights ship in the package and `edge speak TEXT` speaks with them."""

from __future__ import annotations

import json

from edge.presets import DEFAULT_PRESET, get_preset
from tests.helpers import edge_cli

TEXT = "The quick brown fox jumps over the lazy dog."


def test_weights_ship_in_the_package():
    preset = get_preset("edge-voice")
    assert DEFAULT_PRESET == "edge-voice"
    files = {p.name: p.stat().st_size for p in preset.weights_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "training.json"} <= set(files)
    assert sum(files.values()) < 40e6, "the issue caps the shipped weights at 40 MB"
    training = json.loads((preset.weights_dir / "training.json").read_text())
    assert training["codec"]["steps"] > 0 and training["lm"]["steps"] > 0


def test_speak_without_a_bundle_exports_the_default_voice_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    first = edge_cli("speak", TEXT, "-o", str(tmp_path / "a.wav"), "--json")
    assert first.returncode == 0, first.stderr.decode()
    assert b"exporting the edge-voice preset" in first.stderr
    result = json.loads(first.stdout)
    bundle = tmp_path / "cache" / result["bundle"].rsplit("/", 1)[-1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preset"] == "edge-voice"
    assert set(manifest["graphs"]["lm_step"]["files"]) == {"onnx"}  # only the backend asked for
    # Without sampling flags, the voice's recommendation (its generation_config.json: greedy) is used.
    assert manifest["sampling"] == {"temperature": 0.0} and result["sampling"]["temperature"] == 0.0
    # A trained voice ends its speech on its own (random weights run to --max-seconds): about a second
    # of audio per 5-15 characters of text, like the teacher it learnt from.
    seconds = result["samples"] / result["sample_rate"]
    assert 0.5 < seconds < len(TEXT) / 5, seconds
    # The second call finds the cached export.
    second = edge_cli("speak", TEXT, "-o", str(tmp_path / "b.wav"), "--json")
    assert second.returncode == 0, second.stderr.decode()
    assert b"exporting" not in second.stderr
    assert json.loads(second.stdout)["samples"] == result["samples"]  # greedy: the same audio
