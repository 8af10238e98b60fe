"""`edge batch`: many texts to one WAV each, resumable, on one process, N processes or a Ray cluster.

The input is a text file (one utterance a line, its id the line number) or JSONL (one object a line: ``text``,
and optionally ``id``, ``speaker``, ``seed``). A bad line is reported with its line number and skipped. Each
item is synthesized by a worker holding a loaded voice (`Synthesizer`), which hands back the WAV's bytes and
its manifest row; this process alone writes files: the WAV atomically, then its row appended to
``DIR/manifest.jsonl``. So a killed run loses at most the items in flight, and a rerun skips every item whose
row is there (same text, speaker, seed and settings) and whose WAV has the recorded size.

Every item is sampled with its own seed, and every worker runs its graphs on the same number of threads
(`threads`, 1 by default: a thread count changes float summation order, so the bytes), so the WAVs are
byte-identical whatever the number or kind of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.runtime.audio import to_pcm16
from edge.runtime.loop import DEFAULT_MAX_CHARS, DEFAULT_PAUSE
from edge.runtime.text import read_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FIELDS = {"id", "text", "speaker", "seed", "voice_prompt"}


@dataclass(frozen=True)
class Item:
    """One utterance to speak, from line `line` of the input."""

    id: str
    text: str
    line: int
    speaker: int = 0
    seed: int = 0


@dataclass(frozen=True)
class BadLine:
    line: int
    message: str


@dataclass(frozen=True)
class Settings:
    """What a worker needs to load the voice and speak the same way as every other worker."""

    bundle: str
    backend: str = "onnx"
    threads: int = 1
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_seconds: float = 10.0
    pause: float = DEFAULT_PAUSE
    max_chars: int | None = DEFAULT_MAX_CHARS

    def digest(self, bundle_sha: str) -> str:
        """What a WAV depends on besides its item: the bundle's files and the settings (not its path)."""
        fields = {**asdict(self), "bundle": bundle_sha}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Progress:
    """Where a batch stands, passed to `on_progress` after each item."""

    total: int  # items to speak in this run (not counting those already complete)
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def speed(self) -> float:
        """Audio seconds made per wall-clock second."""
        return self.audio_seconds / self.elapsed if self.elapsed > 0 else 0.0


# --- input ---

def read_items(path: str | Path, speakers: int, seed: int = 0, fmt: str = "auto") -> tuple[list[Item], list[BadLine]]:
    """The items of a batch input and its bad lines. `fmt`: text, jsonl, or auto (jsonl for a .jsonl or
    .ndjson file or one whose first line starts with '{', else text)."""
    if fmt not in ("auto", "text", "jsonl"):
        raise EdgeError(f"unknown --format '{fmt}'; choose auto, text or jsonl")
    text = read_text(path, "batch input")
    lines = text.splitlines()
    if fmt == "auto":
        first = next(ln for ln in lines if ln.strip()).lstrip()
        jsonl = Path(str(path)).suffix.lower() in (".jsonl", ".ndjson") or first.startswith("{")
        fmt = "jsonl" if jsonl else "text"
    items: list[Item] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _parse_row(line, n, speakers, seed) if fmt == "jsonl" else Item(f"{n:06d}", line.strip(), n, 0, seed)
            if item.id in seen:
                raise EdgeError(f"duplicate id '{item.id}' (first on line {seen[item.id]})")
        except EdgeError as e:
            bad.append(BadLine(n, str(e)))
            log.info("line %d: %s; skipped", n, e)
            continue
        seen[item.id] = n
        items.append(item)
    if not items:
        raise EdgeError(f"batch input '{path}' has no usable lines ({len(bad)} bad: line {bad[0].line}: "
                        f"{bad[0].message})" if bad else f"batch input '{path}' has no lines to speak")
    return items, bad


def _parse_row(line: str, n: int, speakers: int, seed: int) -> Item:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise EdgeError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise EdgeError("not a JSON object; each line is {\"id\": ..., \"text\": ...}")
    if "voice_prompt" in row:
        raise EdgeError("'voice_prompt' is not supported: edge voices have no voice prompts yet; "
                        "drop the field or pick a 'speaker'")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise EdgeError("no 'text' (a non-empty string) to speak")
    rid = row.get("id", f"{n:06d}")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not _ID.fullmatch(str(rid)):
        raise EdgeError(f"'id' {rid!r} is not a usable file name: letters, digits, '.', '_', '-' (128 at most), "
                        "not starting with '.' or '-'")
    speaker = row.get("speaker", 0)
    if isinstance(speaker, bool) or not isinstance(speaker, int) or not 0 <= speaker < speakers:
        raise EdgeError(f"unknown speaker {speaker!r}; this voice has speakers 0..{speakers - 1}")
    row_seed = row.get("seed", seed)
    if isinstance(row_seed, bool) or not isinstance(row_seed, int) or row_seed < 0:
        raise EdgeError(f"'seed' must be an integer >= 0, got {row_seed!r}")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        log.debug("line %d: ignoring fields %s", n, ", ".join(unknown))
    return Item(str(rid), text.strip(), n, speaker, row_seed)


# --- the worker side ---

class Synthesizer:
    """A loaded voice that speaks items: `(row, wav bytes)` for each, or `(row with "error", None)` when the
    item's text is one the voice refuses. One per worker process or Ray actor, loaded once."""

    def __init__(self, settings: Settings, config: str):
        from edge.runtime.loop import Voice

        self.settings, self.config = settings, config
        self.voice = Voice.load(settings.bundle, settings.backend, settings.threads)
        s = settings
        self.sampling = self.voice.sampling.override(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)

    def __call__(self, item: Item) -> tuple[dict[str, Any], bytes | None]:
        import numpy as np

        head = {"id": item.id, "line": item.line}
        try:
            stream = self.voice.stream(item.text, item.speaker, self.sampling.override(seed=item.seed),
                                       self.settings.max_seconds, self.settings.pause,
                                       max_chars=self.settings.max_chars)
            audio = np.concatenate(list(stream))
        except EdgeError as e:
            return {**head, "error": str(e)}, None
        data = wav_bytes(audio, self.voice.sample_rate)
        stats = stream.stats
        row = {
            **head, "path": f"{item.id}.wav", "text": item.text, "speaker": item.speaker, "seed": item.seed,
            "config": self.config, "seconds": round(audio.size / self.voice.sample_rate, 6),
            "samples": int(audio.size), "frames": stats.frames, "chunks": stats.chunks,
            "runaways": [c.index for c in stream.runaways()], "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "timings": {"first_audio": stats.first_audio, "total": stats.total, "rtf": stats.rtf},
        }
        return row, data


def wav_bytes(audio: Any, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file's bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(to_pcm16(audio))
    return buf.getvalue()


_worker: Synthesizer | None = None


def _init_process(settings: Settings, config: str, parent: int) -> None:
    global _worker
    _exit_with_parent(parent)
    _worker = Synthesizer(settings, config)


def _process_item(item: Item) -> tuple[dict[str, Any], bytes | None]:
    assert _worker is not None
    return _worker(item)


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed (SIGKILL, no chance to stop it) ends itself instead of waiting forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# --- runners: items in, (row, wav) out in completion order ---

Result = tuple[dict[str, Any], bytes | None]


def run_local(items: Iterable[Item], settings: Settings, config: str) -> Iterator[Result]:
    synth = Synthesizer(settings, config)
    for item in items:
        yield synth(item)


def run_processes(items: list[Item], settings: Settings, config: str, workers: int) -> Iterator[Result]:
    """`workers` spawned processes, each loading the voice once; at most two items in flight per worker."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_process,
                               initargs=(settings, config, os.getpid()))
    todo = iter(items)
    running: set[Future] = set()
    try:
        while True:
            for item in todo:
                running.add(pool.submit(_process_item, item))
                if len(running) >= 2 * workers:
                    break
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def connect_ray(address: str, cpus: int) -> None:
    """Join the Ray cluster at `address`: a cluster's address, `auto` (the running cluster this machine belongs
    to) or `local` (start a private one here with `cpus` CPUs). A process that has already called `ray.init`
    keeps its cluster."""
    try:
        import ray
    except ImportError:
        raise EdgeError("--ray needs the cluster extra: pip install 'edge-codec-tts[cluster]'") from None
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError) as e:
        raise EdgeError(f"cannot reach a Ray cluster at '{address}': {str(e).splitlines()[0]}") from None


def run_ray(items: list[Item], settings: Settings, config: str, workers: int) -> Iterator[Result]:
    """One Ray actor per worker (`connect_ray` first), each holding a loaded voice. The bundle goes to the actors
    through the object store, so their nodes need no copy of it."""
    import ray
    from ray.util import ActorPool

    files = ray.put(_bundle_files(Path(settings.bundle)))
    actor = ray.remote(num_cpus=settings.threads)(VoiceActor)
    actors = [actor.remote(settings, config, files) for _ in range(workers)]
    try:
        yield from ActorPool(actors).map_unordered(lambda a, item: a.speak.remote(item), items)
    finally:  # a long-lived driver must not keep their loaded voices
        for a in actors:
            ray.kill(a)


class VoiceActor:
    """A Ray actor holding one loaded voice; the bundle is unpacked from the object store when its path does
    not exist on the actor's node."""

    def __init__(self, settings: Settings, config: str, files: dict[str, bytes]):
        if not (Path(settings.bundle) / "manifest.json").is_file():
            self._tmp = tempfile.TemporaryDirectory(prefix="edge-bundle-")
            root = Path(self._tmp.name)
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
            settings = Settings(**{**asdict(settings), "bundle": str(root)})
        self.synth = Synthesizer(settings, config)

    def speak(self, item: Item) -> Result:
        return self.synth(item)


def _bundle_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the driver ---

def prepare_out(out: Path) -> Path:
    """The output directory, created if need be; refused if it is a file or not writable."""
    if out.exists() and not out.is_dir():
        raise EdgeError(f"--out '{out}' is a file; give a directory for the WAVs and manifest.jsonl")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeError(f"cannot create --out '{out}': {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise EdgeError(f"--out '{out}' is not writable; choose another directory")
    return out


def load_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """The rows of `out`'s manifest by id (the last row of an id wins; a line cut short by a kill is skipped)."""
    rows: dict[str, dict[str, Any]] = {}
    path = out / MANIFEST
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            rows[row["id"]] = row
    return rows


def complete(row: dict[str, Any] | None, item: Item, config: str, out: Path) -> bool:
    """Whether `row` is `item` spoken with these settings, its WAV there with the recorded size."""
    if not row or "error" in row:
        return False
    same = (row.get("text"), row.get("speaker"), row.get("seed"), row.get("config")) == \
        (item.text, item.speaker, item.seed, config)
    wav = out / str(row.get("path", ""))
    return same and wav.is_file() and wav.stat().st_size == row.get("bytes")


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows).encode())


def run_batch(items: list[Item], out: Path, settings: Settings, bundle_sha: str, workers: int = 1,
              ray: str | None = None, on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Speak `items` into `out`, skipping those already complete there; returns the run's summary."""
    config = settings.digest(bundle_sha)
    for stale in out.glob(".*.partial"):  # temp files of a killed run
        stale.unlink(missing_ok=True)
    old = load_manifest(out)
    done = {i.id: old[i.id] for i in items if complete(old.get(i.id), i, config, out)}
    redone = sum(1 for i in items if i.id in old and i.id not in done and "config" in old[i.id]
                 and old[i.id]["config"] != config)
    if redone:
        log.warning("%d items in %s were made with other settings or texts and are spoken again", redone, out)
    write_manifest(out, list(done.values()))  # rows of complete items only, lines cut short dropped
    todo = [i for i in items if i.id not in done]
    progress = Progress(len(todo))
    if on_progress:
        on_progress(progress)
    failed: list[dict[str, Any]] = []
    if todo:
        if ray is not None:
            results = run_ray(todo, settings, config, workers)
        elif workers > 1:
            results = run_processes(todo, settings, config, min(workers, len(todo)))
        else:
            results = run_local(todo, settings, config)
        with open(out / MANIFEST, "a", encoding="utf-8") as manifest:
            for row, data in results:
                if data is None:
                    failed.append(row)
                    progress.failed += 1
                    log.warning("line %d (%s): %s; skipped", row["line"], row["id"], row["error"])
                else:
                    write_atomic(out / row["path"], data)
                    manifest.write(json.dumps(row) + "\n")
                    manifest.flush()
                    done[row["id"]] = row
                    progress.done += 1
                    progress.audio_seconds += row["seconds"]
                if on_progress:
                    on_progress(progress)
    # The finished manifest in input order, whatever order the workers finished in.
    write_manifest(out, [done[i.id] for i in items if i.id in done])
    return {
        "out": str(out), "manifest": str(out / MANIFEST), "items": len(items), "spoken": progress.done,
        "skipped": len(items) - len(todo), "failed": len(failed),
        "runaways": [i.id for i in items if done.get(i.id, {}).get("runaways")],  # items with a chunk that never ended
        "audio_seconds": progress.audio_seconds, "seconds": progress.elapsed, "speed": progress.speed,
        "workers": workers, "ray": ray, "errors": [{"line": r["line"], "id": r["id"], "error": r["error"]}
                                                   for r in sorted(failed, key=lambda r: r["line"])],
    }
