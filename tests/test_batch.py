"""`edge batch`: input parsing, the manifest, resuming (also after a kill); workers and Ray give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.api import batch
from edge.errors import EdgeError
from edge.runtime.batch import MANIFEST, read_items
from tests.helpers import edge_cli

LINES = ["Hello there.", "Dr. Smith paid $3.50. He left.", "A third line, with a clause.", "Four.", "Five is here.",
         "Six, seven.", "The end of the list."]
FAST = {"max_seconds": 0.3, "temperature": 0.9, "seed": 5}  # csm-tiny rarely ends by itself: keep items short


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def wavs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.wav"))}


@pytest.fixture(scope="module")
def text_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "lines.txt"
    path.write_text("\n".join(LINES[:3]) + "\n\n" + "\n".join(LINES[3:]) + "\n")  # a blank line is no item
    return path


@pytest.fixture(scope="module")
def single(tiny_bundle, text_input, tmp_path_factory) -> Path:
    """The reference: one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = batch(text_input, out, tiny_bundle, **FAST)
    assert result["spoken"] == len(LINES) and result["errors"] == []
    return out


# --- input ---

def test_text_lines_are_items_named_by_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("First line.\n\n  Third line.  \n")
    items, bad = read_items(path, speakers=2, seed=4)
    assert [(i.id, i.text, i.line, i.speaker, i.seed) for i in items] == [
        ("000001", "First line.", 1, 0, 4), ("000003", "Third line.", 3, 0, 4)]
    assert bad == []


def test_jsonl_rows_and_bad_lines(tmp_path):
    rows = [
        '{"id": "intro", "text": "Hello.", "speaker": 1, "seed": 9, "note": "ignored"}',
        "not json",
        '{"id": "x"}',
        '{"text": "Who?", "speaker": 5}',
        '{"text": "Prompted.", "voice_prompt": "me.wav"}',
        '{"id": "intro", "text": "Again."}',
        '{"id": "../up", "text": "Escape."}',
        '["a", "list"]',
        '{"text": "No id here.", "seed": -1}',
        '{"text": "No id, fine."}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(rows) + "\n")
    items, bad = read_items(path, speakers=2)
    assert [(i.id, i.text, i.line, i.speaker, i.seed) for i in items] == [
        ("intro", "Hello.", 1, 1, 9), ("000010", "No id, fine.", 10, 0, 0)]
    assert {b.line: b.message.split(";")[0] for b in bad} == {
        2: "not JSON (Expecting value at column 1)",
        3: "no 'text' (a non-empty string) to speak",
        4: "unknown speaker 5",
        5: "'voice_prompt' is not supported: edge voices have no voice prompts yet",
        6: "duplicate id 'intro' (first on line 1)",
        7: "'id' '../up' is not a usable file name: letters, digits, '.', '_', '-' (128 at most), "
           "not starting with '.' or '-'",
        8: "not a JSON object",
        9: "'seed' must be an integer >= 0, got -1",
    }


def test_unusable_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(EdgeError, match="is empty"):
        read_items(tmp_path / "empty.txt", 1)
    (tmp_path / "bad.jsonl").write_text("{}\n{\"id\": 1}\n")
    with pytest.raises(EdgeError, match=r"has no usable lines \(2 bad: line 1: no 'text'"):
        read_items(tmp_path / "bad.jsonl", 1)
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(EdgeError, match="is binary"):
        read_items(tmp_path / "bin.txt", 1)


# --- output ---

def test_manifest_rows_describe_their_wavs(single):
    rows = manifest(single)
    assert [r["text"] for r in rows] == LINES and [r["id"] for r in rows] == [
        "000001", "000002", "000003", "000005", "000006", "000007", "000008"]
    for r in rows:
        data = (single / r["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert len(data) == 44 + 2 * r["samples"] and r["seconds"] == r["samples"] / 24000
        assert r["frames"] > 0 and set(r["timings"]) == {"first_audio", "total", "rtf"}
    assert rows[1]["chunks"] == 2  # two sentences, one stream
    assert all(r["runaways"] == [] or set(r["runaways"]) <= set(range(r["chunks"])) for r in rows)
    assert sorted(p.name for p in single.iterdir()) == sorted([MANIFEST] + [r["path"] for r in rows])


def test_rerun_skips_complete_items_and_redoes_changed_ones(tiny_bundle, single, text_input, tmp_path):
    out = tmp_path / "out"
    import shutil

    shutil.copytree(single, out)
    before = wavs(out)
    again = batch(text_input, out, tiny_bundle, **FAST)
    assert (again["spoken"], again["skipped"]) == (0, len(LINES)) and wavs(out) == before
    changed = tmp_path / "changed.txt"
    changed.write_text(text_input.read_text().replace("Four.", "Four and more."))
    (out / "000002.wav").unlink()  # a missing WAV is spoken again too
    result = batch(changed, out, tiny_bundle, **FAST)
    assert (result["spoken"], result["skipped"]) == (2, len(LINES) - 2)
    rows = manifest(out)
    assert [r["id"] for r in rows] == [r["id"] for r in manifest(single)]  # each once, input order
    assert rows[3]["text"] == "Four and more." and wavs(out)["000002.wav"] == before["000002.wav"]
    # Other settings are other audio: nothing is skipped.
    assert batch(changed, out, tiny_bundle, **{**FAST, "seed": 6})["skipped"] == 0


def test_worker_processes_give_the_same_bytes(tiny_bundle, single, text_input, tmp_path):
    result = batch(text_input, tmp_path / "two", tiny_bundle, workers=2, **FAST)
    assert result["spoken"] == len(LINES)
    assert result["runaways"] == [r["id"] for r in manifest(tmp_path / "two") if r["runaways"]]
    assert wavs(tmp_path / "two") == wavs(single)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timings"} for r in rows]  # noqa: E731
    assert strip(manifest(tmp_path / "two")) == strip(manifest(single))


def test_ray_cluster_gives_the_same_bytes(tiny_bundle, single, text_input, tmp_path):
    """A local two-CPU Ray cluster on loopback, one actor per worker: the same WAVs as one process."""
    if os.environ.get("EDGE_REQUIRE_RAY") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray", reason="the cluster extra is not installed; set EDGE_REQUIRE_RAY=1 to fail")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        result = batch(text_input, tmp_path / "ray", tiny_bundle, workers=2, ray="auto", **FAST)
    finally:
        ray.shutdown()
    assert result["spoken"] == len(LINES) and result["ray"] == "auto"
    assert wavs(tmp_path / "ray") == wavs(single)


def test_killed_batch_resumes_with_every_item_once(tiny_bundle, tmp_path):
    """A 200-line batch on two workers, SIGKILLed half-way (no cleanup at all), then run again: every item is
    there exactly once, with the bytes an uninterrupted run gives, and no worker outlives the killed run."""
    lines = [f"Line number {n}, spoken by the batch." for n in range(200)]
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), "-b", str(tiny_bundle), "--max-seconds", "0.5", "--seed", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "edge", *args, "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / MANIFEST).is_file() and len((out / MANIFEST).read_bytes().splitlines()) >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = {r["id"] for r in manifest(out)}
    assert 40 <= len(partial) < 200
    while time.monotonic() < deadline:  # the workers notice their parent is gone and end
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the killed batch")

    r = edge_cli(*args, "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["skipped"] >= len(partial) and result["skipped"] + result["spoken"] == 200
    rows = manifest(out)
    assert [r["id"] for r in rows] == [f"{n:06d}" for n in range(1, 201)]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [r["path"] for r in rows])
    for row in rows:
        assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]
    # The same bytes as an uninterrupted single-process run of a sample of the lines.
    sample = tmp_path / "sample.txt"
    sample.write_text("\n".join(lines[:5]) + "\n")
    batch(sample, tmp_path / "ref", tiny_bundle, max_seconds=0.5, seed=1)
    assert wavs(tmp_path / "ref") == {k: v for k, v in wavs(out).items() if k in wavs(tmp_path / "ref")}


# --- bad input, one line each, nothing written ---

@pytest.mark.parametrize(("content", "extra", "message"), [
    (b"", [], "is empty"),
    (b"\x00\x01\x02", [], "is binary"),
    (b'{"id": "a"}\n', [], "has no usable lines"),
    (b"Hello.\n", ["--workers", "0"], "--workers must be a positive integer"),
])
def test_bad_batch_input(tiny_bundle, tmp_path, content, extra, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out"
    r = edge_cli("batch", str(src), "-o", str(out), "-b", str(tiny_bundle), *extra)
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_out_is_a_file(tiny_bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("Hello.\n")
    r = edge_cli("batch", str(src), "-o", str(src), "-b", str(tiny_bundle))
    assert r.returncode == 2 and "is a file" in r.stderr.decode() and src.read_text() == "Hello.\n"


def test_ray_without_the_extra(tiny_bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("Hello.\n")
    code = ("import sys; sys.modules['ray'] = None; from edge.cli import main; "
            f"sys.argv = ['edge', 'batch', {str(src)!r}, '-o', {str(tmp_path / 'out')!r}, '-b', {str(tiny_bundle)!r}, "
            "'--ray', 'auto']; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2 and "pip install 'edge-codec-tts[cluster]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_refused_item_is_skipped_not_fatal(tiny_bundle, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("Fine.\n" + "x" * 300 + "\nAlso fine.\n")
    r = edge_cli("batch", str(src), "-o", str(tmp_path / "out"), "-b", str(tiny_bundle), "--max-seconds", "0.2")
    assert r.returncode == 2
    assert "line 2: the word" in r.stderr.decode()
    assert [row["id"] for row in manifest(tmp_path / "out")] == ["000001", "000003"]
