"""Nothing a user types loses data: each case here lost data, or gave "internal error", before the output-path
policy (`edge.outputs`), the bounds on flags, and the whole-manifest checks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.api import default_bundle, export, quantize, speak
from edge.errors import EdgeError
from edge.runtime.loop import Voice
from edge.runtime.sampler import SamplingConfig
from tests.helpers import edge_cli, write_small_bundle

GREEDY = SamplingConfig(temperature=0)


def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, bytes]:
    """`edge ARGS` in this process (exit code, stderr, stdout bytes): fast enough to fuzz."""
    from edge.cli import main

    err, out = io.StringIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, write_through=True)
    argv, stdin_ = sys.argv, sys.stdin
    sys.argv, sys.stdin = ["edge", *args], io.TextIOWrapper(io.BytesIO(stdin))
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.stdin = argv, stdin_
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code, err.getvalue(), out.getvalue()


def one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1 and not stderr.startswith("\n") and "Traceback" not in stderr


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "thesis.txt").write_text("important")
    return d


# --- 1. --force deletes only what edge wrote ---


def test_force_never_deletes_a_strangers_directory(tiny_bundle, docs):
    code, err, _ = run_cli("quantize", str(tiny_bundle), "--recipe", "int8", "--out", str(docs), "--force",
                           "--no-eval")
    assert code == 2 and one_line(err) and "not an edge bundle" in err
    assert (docs / "thesis.txt").read_text() == "important"


def test_force_never_deletes_the_input_or_its_parent(tiny_bundle, tmp_path):
    src = tmp_path / "work" / "voice"
    shutil.copytree(tiny_bundle, src)
    (tmp_path / "work" / "neighbour.txt").write_text("keep")
    for out in (src.parent, src):
        with pytest.raises(EdgeError, match="overlaps the input"):
            quantize(src, "int8", out, force=True)
    assert (tmp_path / "work" / "neighbour.txt").read_text() == "keep"
    assert (src / "manifest.json").is_file()


def test_force_never_deletes_the_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    for out in (ckpt, ckpt / "bundle", tmp_path):
        with pytest.raises(EdgeError, match="overlaps the input"):
            export("csm-tiny", out=out, checkpoint=ckpt, force=True)
    assert (ckpt / "model.safetensors").read_bytes() == b"weights"


def test_force_replaces_a_bundle_and_an_empty_directory(tmp_path):
    out = write_small_bundle(tmp_path / "b")
    (out / "stale.txt").write_text("from the old bundle")
    with pytest.raises(EdgeError, match="already exists"):
        write_small_bundle(out)
    write_small_bundle(out, overwrite=True)  # an edge bundle: replaced whole
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_small_bundle(empty, overwrite=True)
    assert (empty / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "empty"]


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path):
    out = tmp_path / "b"
    dead = tmp_path / f".b.{2**22 + 12345}.abc.partial"  # no such pid (above Linux's default pid_max)
    dead.mkdir()
    (dead / "half.onnx").write_bytes(b"half")
    live = tmp_path / f".b.{os.getpid()}.xyz.partial"  # a run in progress (this one) is left alone
    live.mkdir()
    write_small_bundle(out)
    assert not dead.exists() and live.exists()
    # killed between the two renames of a replace: the old bundle waits at .b.old and nothing is at b
    os.replace(out, tmp_path / ".b.old")
    write_small_bundle(tmp_path / "other")
    with pytest.raises(EdgeError, match="already exists"):
        write_small_bundle(out)  # the old bundle was put back first, so it is not overwritten without --force
    assert (out / "manifest.json").is_file() and not (tmp_path / ".b.old").exists()


# --- 2. speak --out ---


def test_speak_never_overwrites_a_bundle_file_or_a_non_wav(tiny_bundle, tmp_path):
    bundle = tmp_path / "voice"
    shutil.copytree(tiny_bundle, bundle)
    manifest = (bundle / "manifest.json").read_bytes()
    code, err, _ = run_cli("speak", "Hi.", "-b", str(bundle), "--out", str(bundle / "manifest.json"))
    assert code == 2 and one_line(err) and "inside the bundle" in err
    assert (bundle / "manifest.json").read_bytes() == manifest
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    code, err, _ = run_cli("speak", "Hi.", "-b", str(bundle), "--out", str(notes))
    assert code == 2 and "not a WAV" in err and notes.read_text() == "mine"
    code, err, _ = run_cli("speak", "Hi.", "-b", str(bundle), "--out", str(notes), "--force", "--max-seconds", "0.2")
    assert code == 0, err
    assert notes.read_bytes()[:4] == b"RIFF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "voice"]  # no temporary left


def test_speak_never_overwrites_its_inputs_even_with_force(tiny_bundle, tmp_path):
    bundle = tmp_path / "voice"
    shutil.copytree(tiny_bundle, bundle)
    manifest = (bundle / "manifest.json").read_bytes()
    code, err, _ = run_cli("speak", "Hi.", "-b", str(bundle), "--out", str(bundle / "manifest.json"), "--force")
    assert code == 2 and one_line(err) and "the input" in err
    assert (bundle / "manifest.json").read_bytes() == manifest
    text = tmp_path / "words.txt"
    text.write_text("Hello there.")
    code, err, _ = run_cli("speak", "--file", str(text), "-b", str(bundle), "--out", str(text), "--force")
    assert code == 2 and one_line(err) and "the input" in err and text.read_text() == "Hello there."


def test_speak_streams_into_a_fifo_and_keeps_a_symlink(tiny_bundle, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(open(fifo, "rb").read()))  # noqa: SIM115
    reader.start()
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(fifo), "--temperature", "0",
                           "--max-seconds", "0.4")
    reader.join(60)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not replaced by a file
    assert got[:4] == b"RIFF" and len(got) > 44
    wav = tmp_path / "real.wav"
    link = tmp_path / "link.wav"
    link.symlink_to(wav)
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(link), "--temperature", "0",
                           "--max-seconds", "0.4")
    assert code == 0, err
    assert link.is_symlink() and wav.read_bytes()[44:] == bytes(got[44:])
    code, err, out = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", "-", "--temperature", "0",
                             "--max-seconds", "0.4")
    assert code == 0 and out[44:] == bytes(got[44:])


def test_outputs_follow_the_umask(tiny_bundle, tmp_path):
    old = os.umask(0o022)
    try:
        speak("Hi.", bundle=tiny_bundle, out=tmp_path / "a.wav", max_seconds=0.2)
        bundle = write_small_bundle(tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.wav").stat().st_mode) == 0o644
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755


# --- 3-4. bounds and interrupts ---


@pytest.mark.parametrize("threads", ["100000", "-2", "0"])
def test_threads_are_bounded_by_the_cores(tiny_bundle, tmp_path, threads):
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(tmp_path / "x.wav"), "--threads",
                           threads)
    assert code == 2 and one_line(err) and "cores" in err and not list(tmp_path.iterdir())


def test_interrupt_exits_130_and_writes_nothing(tiny_bundle, tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "x.wav"
    monkeypatch.setattr(Voice, "stream", interrupted)
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(out))
    assert code == 130 and one_line(err) and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_mid_stream_leaves_no_wav(tiny_bundle, tmp_path, monkeypatch):
    real = Voice.stream

    def stream(self, *args, **kwargs):
        s = real(self, *args, **kwargs)
        chunks = iter(s)

        def cut():
            yield next(chunks)
            raise KeyboardInterrupt

        s._chunks = cut()
        return s

    monkeypatch.setattr(Voice, "stream", stream)
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(tmp_path / "x.wav"))
    assert code == 130 and list(tmp_path.iterdir()) == []


# --- 5. a Voice shared between threads ---


def test_a_voice_shared_between_threads_gives_each_stream_its_own_codes(tiny_bundle):
    voice = Voice.load(tiny_bundle, "onnx")
    texts = ["Hello there.", "A different sentence, longer."]
    alone = [voice.stream(t, sampling=GREEDY, max_seconds=0.8) for t in texts]
    for s in alone:
        list(s)
    # Both streams reach their prefill together: before each stream owned its prompt, the second one's text
    # overwrote the first's in the shared buffer while the first waited here.
    prefill, barrier = voice.sessions["lm_prefill"], threading.Barrier(2)

    class Meeting:
        input_names, output_names = prefill.input_names, prefill.output_names

        def run(self, feeds):
            tokens = feeds["tokens"]
            barrier.wait(10)
            return prefill.run({**feeds, "tokens": tokens})

    voice.sessions["lm_prefill"] = Meeting()
    results: dict[int, list] = {}

    def speak_one(i):
        s = voice.stream(texts[i], sampling=GREEDY, max_seconds=0.8)
        list(s)
        results[i] = s.codes

    threads = [threading.Thread(target=speak_one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] == alone[0].codes and results[1] == alone[1].codes


# --- 6. user-caused input is exit 2, never "internal error" ---


def test_text_that_is_not_utf8(tiny_bundle, tmp_path):
    out = tmp_path / "x.wav"
    r = edge_cli("speak", "-", "-b", str(tiny_bundle), "--out", str(out), stdin=b"caf\xe9 \xff")
    assert r.returncode == 2 and "not UTF-8" in r.stderr.decode() and not out.exists()
    r = __import__("subprocess").run([sys.executable, "-m", "edge", "speak", b"caf\xe9", "-b", str(tiny_bundle),
                                      "--out", str(out)], capture_output=True, timeout=600)
    assert r.returncode == 2 and "not UTF-8" in r.stderr.decode() and not out.exists()


def test_extreme_numbers(tiny_bundle, tmp_path):
    out = tmp_path / "x.wav"
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(out), "--max-seconds", "1e308")
    assert code == 2 and one_line(err) and "--max-seconds" in err
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(out), "--max-seconds", "0.01")
    assert code == 2 and "shorter than one frame" in err and not out.exists()
    code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(out), "--temperature", "1e-320",
                           "--max-seconds", "0.4")
    assert code == 0, err  # a tiny temperature is greedy in the limit, not NaN


@pytest.fixture(scope="module")
def editable(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle (onnx graphs only) whose manifest a test may rewrite."""
    root = tmp_path_factory.mktemp("editable") / "voice"
    shutil.copytree(tiny_bundle, root)
    return root, json.loads((root / "manifest.json").read_text())


def _write(root: Path, manifest: dict | str) -> None:
    (root / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))


def _edited(manifest: dict, path: list, value) -> dict:
    m = json.loads(json.dumps(manifest))
    node = m
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


@pytest.mark.parametrize(("path", "value", "message"), [
    (["model", "sample_rate"], KeyError, "'sample_rate' is a required property"),
    (["model", "prompt_capacity"], "abc", "model/prompt_capacity"),
    (["model"], {}, "is a required property"),
    (["tokenizer"], {"kind": "hf"}, "'file' is a required property"),
    (["graphs", "lm_step", "inputs", 1, "name"], "pos", "does not have the inputs"),
    (["graphs", "depth_step", "inputs", 0, "shape"], [1, 999], "of shape"),
    (["family"], "dia", "is not one of"),
    (["model", "prompt_capacity"], 10, "the model section implies"),
    (["model", "kv_capacity"], 10_000, "kv_capacity 10000"),
])
def test_manifests_are_checked_whole(editable, tmp_path, path, value, message):
    root, manifest = editable
    _write(root, _edited(manifest, path, value))
    try:
        code, err, _ = run_cli("inspect", str(root))
        assert code == 2 and one_line(err) and message in err, err
        code, err, _ = run_cli("speak", "Hi.", "-b", str(root), "--out", str(tmp_path / "x.wav"))
        assert code == 2 and one_line(err) and not (tmp_path / "x.wav").exists(), err
    finally:
        _write(root, manifest)


def test_a_deeply_nested_manifest(editable):
    root, manifest = editable
    _write(root, "[" * 200_000 + "]" * 200_000)
    try:
        code, err, _ = run_cli("inspect", str(root))
        assert code == 2 and one_line(err) and "nested too deeply" in err
    finally:
        _write(root, manifest)


def test_a_truncated_graph_with_a_recomputed_hash(editable):
    from edge.bundle import sha256_file

    root, manifest = editable
    graph = root / "depth_step.onnx"
    original = graph.read_bytes()
    graph.write_bytes(original[: len(original) // 2])
    m = json.loads(json.dumps(manifest))
    m["files"]["depth_step.onnx"] = {"sha256": sha256_file(graph), "bytes": graph.stat().st_size}
    _write(root, m)
    try:
        for args in (["inspect", str(root)], ["speak", "Hi.", "-b", str(root), "--out", str(root.parent / "x.wav")]):
            code, err, _ = run_cli(*args)
            assert code == 2 and one_line(err) and "depth_step.onnx" in err, err
    finally:
        graph.write_bytes(original)
        _write(root, manifest)


# --- 7. smaller ones ---


def test_a_full_kv_cache_is_reported(tiny_bundle, caplog):
    voice = Voice.load(tiny_bundle, "onnx")
    long = "x" * (voice.model["prompt_capacity"] - 8)
    s = voice.stream(long, sampling=SamplingConfig(temperature=1.0, seed=3), max_seconds=3600)
    with caplog.at_level("WARNING"):
        list(s)
    if s.stats.stopped_by == "eos":
        pytest.skip("this seed ended on its own")
    assert s.stats.stopped_by == "kv_capacity" and "--kv-capacity" in caplog.text


def test_a_recipe_naming_a_missing_graph(tiny_bundle, tmp_path):
    with pytest.raises(EdgeError, match="names no graph"):
        quantize(tiny_bundle, "codec_encoder=int8", tmp_path / "q")
    assert not list(tmp_path.iterdir())


def test_a_broken_default_voice_cache_is_exported_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path))
    path = default_bundle("csm-tiny")
    (path / "lm_step.onnx").write_bytes(b"broken")
    assert default_bundle("csm-tiny") == path
    Voice.load(path).synthesize("Hi.", sampling=GREEDY, max_seconds=0.2)


def test_usage_errors_are_one_line():
    for args in (["speak", "Hi.", "--threads", "abc"], ["speak"], ["nope"], ["speak", "Hi.", "--bogus"]):
        code, err, _ = run_cli(*args)
        assert code == 2 and one_line(err) and err.startswith("error:"), (args, err)


def test_executorch_says_nothing_unasked(tiny_bundle, tmp_path):
    r = edge_cli("speak", "Hi.", "-b", str(tiny_bundle), "--backend", "executorch", "--out", str(tmp_path / "x.wav"),
                 "--max-seconds", "0.2")
    lines = r.stderr.decode().splitlines()  # its 0.2 s stop the sentence, which is worth a warning; nothing else
    assert r.returncode == 0 and lines[-1].startswith(f"wrote {tmp_path / 'x.wav'}: "), lines
    assert all(line.startswith("WARNING: chunk 1 of 1 hit its frame limit") for line in lines[:-1]), lines


def test_the_api_checks_types(tiny_bundle):
    voice = Voice.load(tiny_bundle, "onnx")
    with pytest.raises(EdgeError, match="text must be a str, got bytes"):
        voice.stream(b"hello")
    with pytest.raises(EdgeError, match="unknown speaker 0.5"):
        voice.stream("hello", speaker=0.5)
    with pytest.raises(EdgeError, match="--top-k must be an integer"):
        SamplingConfig(top_k=2.5)
    with pytest.raises(EdgeError, match="--threads"):
        Voice.load(tiny_bundle, "onnx", threads=10**6)
    audio, _ = voice.synthesize("hello", sampling=GREEDY, max_seconds=0.2)
    assert np.isfinite(audio).all()
