"""The streaming runtime: backend parity, streaming output, and bad input."""

from __future__ import annotations

import json
import shutil
import wave

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.errors import EdgeError
from edge.runtime.loop import Voice
from edge.runtime.sampler import Sampler, SamplingConfig
from tests.helpers import edge_cli

GREEDY = SamplingConfig(temperature=0)
TEXT = "Hello from edge."


@pytest.fixture(scope="module")
def greedy_runs(tiny_bundle):
    runs = {}
    for backend in ("torch", "onnx", "executorch"):
        voice = Voice.load(tiny_bundle, backend)
        stream = voice.stream(TEXT, sampling=GREEDY, max_seconds=2.0)
        audio = np.concatenate(list(stream))
        runs[backend] = (stream.codes, audio, stream.stats)
    return runs


def test_backends_token_identical(greedy_runs):
    ref_codes = greedy_runs["torch"][0]
    assert len(ref_codes) >= 20
    for backend in ("onnx", "executorch"):
        assert greedy_runs[backend][0] == ref_codes, backend


def test_backends_audio_close(greedy_runs):
    ref = greedy_runs["torch"][1]
    for backend in ("onnx", "executorch"):
        audio = greedy_runs[backend][1]
        assert audio.shape == ref.shape
        snr = 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - audio) ** 2), 1e-30))
        assert snr > 60, f"{backend}: SNR {snr:.1f} dB"


def test_stats_are_measured(greedy_runs):
    codes, audio, stats = greedy_runs["onnx"]
    assert stats.frames == len(audio) // 1920
    assert stats.audio_seconds == pytest.approx(len(audio) / 24000)
    assert 0 < stats.first_audio <= stats.total
    # The first chunk is the first frame's audio, out before the second frame is generated (no buffering).
    assert stats.first_frames == 1 and 0 < stats.first_frame < stats.first_audio - stats.prefill + 1e-9
    assert stats.prefill > 0 and stats.lm > 0 and stats.depth > 0 and stats.codec > 0
    assert stats.host >= 0 and np.isfinite(stats.rtf)
    assert set(stats.per_frame_ms()) == {"lm", "depth", "codec", "host"}


def test_chunks_arrive_one_frame_at_a_time(tiny_bundle):
    voice = Voice.load(tiny_bundle, "onnx")
    stream = voice.stream(TEXT, sampling=GREEDY, max_seconds=0.5)
    sizes = [c.size for c in stream]
    assert sizes and all(s == 1920 for s in sizes)
    assert stream.stats.stopped_by in ("eos", "max_seconds", "kv_capacity")


def test_streams_of_one_voice_keep_their_own_state(tiny_bundle, greedy_runs):
    """The runtime writes KV caches in place: two streams of one voice side by side, and a stream that reuses
    a finished one's (pooled) state, each give what a fresh voice gives."""
    voice = Voice.load(tiny_bundle, "onnx")
    other = "A second sentence, longer than the first one."
    ref_other = np.concatenate(list(Voice.load(tiny_bundle, "onnx").stream(other, sampling=GREEDY,
                                                                          max_seconds=2.0)))
    a = voice.stream(TEXT, sampling=GREEDY, max_seconds=2.0)
    b = voice.stream(other, sampling=GREEDY, max_seconds=2.0)
    chunks: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for ca, cb in zip(a, b, strict=False):  # alternate chunk by chunk
        chunks["a"].append(ca)
        chunks["b"].append(cb)
    chunks["a"] += list(a)
    chunks["b"] += list(b)
    np.testing.assert_array_equal(np.concatenate(chunks["a"]), greedy_runs["onnx"][1])
    np.testing.assert_array_equal(np.concatenate(chunks["b"]), ref_other)
    again = np.concatenate(list(voice.stream(TEXT, sampling=GREEDY, max_seconds=2.0)))  # pooled state, reset
    np.testing.assert_array_equal(again, greedy_runs["onnx"][1])


def test_stream_equals_wav(tiny_bundle, tmp_path):
    wav_path = tmp_path / "out.wav"
    r = edge_cli("speak", TEXT, "--bundle", str(tiny_bundle), "--stream", "--out", str(wav_path),
                 "--temperature", "0", "--max-seconds", "1")
    assert r.returncode == 0, r.stderr.decode()
    with wave.open(str(wav_path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        frames = w.readframes(w.getnframes())
    assert len(r.stdout) > 0 and r.stdout == frames


def test_speak_json_and_sampling_determinism(tiny_bundle, tmp_path):
    outs = []
    for i in range(2):
        r = edge_cli("speak", TEXT, "-b", str(tiny_bundle), "-o", str(tmp_path / f"{i}.wav"), "--seed", "7",
                     "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--max-seconds", "1", "--json")
        assert r.returncode == 0, r.stderr.decode()
        summary = json.loads(r.stdout)
        assert summary["stats"]["first_audio"] > 0 and summary["samples"] > 0
        outs.append((tmp_path / f"{i}.wav").read_bytes())
    assert outs[0] == outs[1]


def test_flags_override_the_voices_recommended_sampling(tiny_bundle, tmp_path):
    from edge.api import speak

    greedy_voice = tmp_path / "greedy"
    shutil.copytree(tiny_bundle, greedy_voice)
    m = json.loads((greedy_voice / "manifest.json").read_text())
    (greedy_voice / "manifest.json").write_text(json.dumps({**m, "sampling": {"temperature": 0.0}}))
    assert Voice.load(tiny_bundle).sampling == SamplingConfig()  # no recommendation: the defaults
    assert Voice.load(greedy_voice).sampling == GREEDY
    chosen = speak(TEXT, greedy_voice, max_seconds=0.5)["sampling"]
    assert chosen == {"temperature": 0.0, "top_k": 50, "top_p": 1.0, "seed": 0}
    chosen = speak(TEXT, greedy_voice, temperature=0.8, top_k=5, seed=3, max_seconds=0.5)["sampling"]
    assert chosen == {"temperature": 0.8, "top_k": 5, "top_p": 1.0, "seed": 3}


def test_sampler():
    logits = np.array([0.0, 5.0, 1.0, -3.0])
    assert Sampler(GREEDY)(logits) == 1
    top1 = Sampler(SamplingConfig(temperature=1.0, top_k=1, seed=3))
    assert all(top1(logits) == 1 for _ in range(20))
    nucleus = Sampler(SamplingConfig(temperature=1.0, top_k=0, top_p=0.5, seed=3))
    assert all(nucleus(logits) == 1 for _ in range(20))
    hot = Sampler(SamplingConfig(temperature=5.0, top_k=0, seed=0))
    assert len({hot(logits) for _ in range(200)}) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--top-p", "0"], "--top-p must be in"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
        (["--speaker", "9"], "unknown speaker 9"),
        (["--max-seconds", "0"], "--max-seconds must be a number in"),
        (["--backend", "tflite"], "unknown backend 'tflite'"),
    ],
)
def test_bad_flags(tiny_bundle, tmp_path, args, message):
    out = tmp_path / "x.wav"
    r = edge_cli("speak", TEXT, "-b", str(tiny_bundle), "-o", str(out), *args)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_text(tiny_bundle):
    voice = Voice.load(tiny_bundle, "onnx")
    with pytest.raises(EdgeError, match="text is empty"):
        voice.stream("   ")
    with pytest.raises(EdgeError, match="alone does not fit"):  # longer texts are chunked, words never cut
        voice.stream("x" * 20_000)


def test_unwritable_output(tiny_bundle, tmp_path):
    r = edge_cli("speak", TEXT, "-b", str(tiny_bundle), "-o", str(tmp_path / "no" / "such" / "dir.wav"))
    assert r.returncode == 2 and "does not exist" in r.stderr.decode()
    r = edge_cli("speak", TEXT, "-b", str(tiny_bundle), "-o", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr.decode()


def test_bundle_for_another_backend(tiny_bundle, tmp_path):
    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(tiny_bundle, onnx_only)
    m = json.loads((onnx_only / "manifest.json").read_text())
    m.pop("reference")
    for g in m["graphs"].values():
        g["files"] = {"onnx": g["files"]["onnx"]}
    m["files"] = {k: v for k, v in m["files"].items() if k.endswith((".onnx", ".onnx.data"))}
    (onnx_only / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(onnx_only / "reference")
    for p in onnx_only.glob("*.pte"):
        p.unlink()
    assert load_bundle(onnx_only).backends() == ["onnx"]
    r = edge_cli("speak", TEXT, "-b", str(onnx_only), "-o", str(tmp_path / "x.wav"), "--backend", "executorch")
    assert r.returncode == 2 and "has no 'executorch' graphs" in r.stderr.decode()
    assert not (tmp_path / "x.wav").exists()


def test_onnx_path_never_imports_torch(tiny_bundle):
    """A laptop install without torch runs ONNX bundles: the ONNX path must not import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge.api import Voice, SamplingConfig\n"
        f"audio, stats = Voice.load({str(tiny_bundle)!r}, 'onnx').synthesize('hi', max_seconds=0.4)\n"
        "assert audio.size > 0\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'executorch')]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
