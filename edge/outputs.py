"""Where edge writes: the one output-path policy of every command.

- A directory output (a bundle, a report) is built in a hidden sibling ``.NAME.<pid>.<random>.partial`` and
  renamed into place when complete. ``--force`` replaces only what edge wrote there (a bundle, a report) or an
  empty directory, never a file, a stranger's directory, or one that holds or is inside an input.
- An audio output (``speak --out``) goes to a regular file through a hidden sibling renamed over it when
  complete; a FIFO, a character device or ``-`` (stdout) is written as a stream instead, never replaced. An
  existing file that is not a WAV, or that lies inside a bundle, is replaced only with ``--force``; one that is or
  lies inside an input of the run (the bundle spoken with, the text file read), never.
- What edge writes gets the modes the umask allows, as any other program's files do.
- A run killed before its rename (SIGKILL, power loss) leaves its ``.partial`` sibling behind; the next run
  that writes to the same place removes it. A run killed between the two renames that replace a directory
  (on Windows a rename cannot replace a directory, so the old one is first moved to ``.NAME.old``) leaves the
  old directory at ``.NAME.old`` and nothing at NAME; the next run puts it back before it starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from edge.errors import EdgeError

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.partial$")
# Where a process cannot be asked whether it is alive (Windows), a leftover is stale after this long.
_STALE_SECONDS = 24 * 3600


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def dir_mode() -> int:
    return 0o777 & ~umask()


def file_mode() -> int:
    return 0o666 & ~umask()


def is_bundle(path: Path) -> bool:
    """Whether `path` is a directory edge wrote as a bundle: its manifest.json names an integer format_version."""
    import json

    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int) and "graphs" in manifest


def bundle_holding(path: Path) -> Path | None:
    """The bundle directory `path` lies inside, if any."""
    for parent in path.resolve().parents:
        if is_bundle(parent):
            return parent
    return None


def _alive(pid: int, mtime: float) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill would terminate the process there; age is the only safe test
        return time.time() - mtime < _STALE_SECONDS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: Path) -> None:
    """Remove what a killed run left beside `out`, and put back a directory a killed replace moved aside."""
    parent = out.parent
    try:
        siblings = list(parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = _PARTIAL.match(p.name)
        if not m or m["name"] != out.name:
            continue
        try:
            if _alive(int(m["pid"]), p.lstat().st_mtime):
                continue
        except OSError:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        if not out.exists() and not out.is_symlink():
            os.replace(old, out)  # the run was killed between its two renames: the old output is the user's
        else:
            shutil.rmtree(old, ignore_errors=True)


def staging(out: Path, directory: bool) -> Path:
    """A new hidden sibling of `out` to build it in (a directory or an empty file), with the umask's mode."""
    prefix, parent = f".{out.name}.{os.getpid()}.", out.parent
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=parent))
            tmp.chmod(dir_mode())
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(file_mode())
    except OSError as e:
        raise EdgeError(f"cannot write to '{parent}' ({e.strerror}); choose another --out") from None
    return tmp


def commit_dir(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing a directory there (moved aside first: on Windows a rename
    cannot replace a directory)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_dir_out(out: Path, force: bool, ours: Callable[[Path], bool] = is_bundle, what: str = "an edge bundle",
                  protect: Sequence[Path] = (), flag: str = "--out") -> Path:
    """Refuse, before any work, a directory output edge may not write: see the module docstring."""
    out = Path(out)
    resolved = out.resolve()
    for p in protect:
        if _overlaps(resolved, Path(p).resolve()):
            raise EdgeError(f"{flag} '{out}' overlaps the input '{p}' (one holds the other); writing there would "
                            f"destroy the input: choose another {flag}")
    parent = out.parent
    if not parent.is_dir():
        raise EdgeError(f"directory '{parent}' does not exist; create it or choose another {flag}")
    if not os.access(parent, os.W_OK):
        raise EdgeError(f"directory '{parent}' is not writable; choose another {flag}")
    clean_leftovers(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgeError(f"'{out}' exists and is not a directory; choose another {flag}")
    if out.exists():
        if not force:
            raise EdgeError(f"'{out}' already exists; pass --force to replace it or choose another {flag}")
        if any(out.iterdir()) and not ours(out):
            raise EdgeError(f"'{out}' is not {what}; --force replaces only what edge wrote (or an empty "
                            f"directory), so choose another {flag}")
    return out


# --- audio ---

STDOUT = "-"


def is_wav(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:] == b"WAVE"


def check_audio_out(out: str | Path, force: bool = False, protect: Sequence[Path] = ()) -> Path | None:
    """Refuse, before any work, an audio output edge may not write; return the file to write (its symlink
    resolved), or None for a stream (stdout, a FIFO, a device). A file that is, or lies inside, one of `protect`
    (the bundle spoken with, the text file read) is refused whatever `force` says."""
    if str(out) == STDOUT:
        return None
    path = Path(out)
    target = Path(os.path.realpath(path))  # a symlink's file is written, the link kept
    try:
        mode = os.stat(path).st_mode  # follows links, /proc/self/fd/N included
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise EdgeError(f"output '{out}' cannot be used ({e.strerror}); choose another --out") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise EdgeError(f"output '{out}' is a directory; give a file name such as out.wav")
        if not stat.S_ISREG(mode):
            if not os.access(path, os.W_OK):
                raise EdgeError(f"output '{out}' is not writable; choose another --out")
            return None  # a FIFO or a device: written as a stream, never replaced
        if not force:
            holder = bundle_holding(target)
            if holder is not None:
                raise EdgeError(f"output '{out}' lies inside the bundle {holder}; writing there would corrupt it: "
                                "choose another --out (or --force)")
            if not is_wav(target):
                raise EdgeError(f"output '{out}' exists and is not a WAV file; choose another --out, or pass --force "
                                "to replace it")
    for p in protect:
        if target == Path(p).resolve() or target.is_relative_to(Path(p).resolve()):
            raise EdgeError(f"output '{out}' is, or lies inside, the input '{p}'; writing there would destroy the "
                            "input: choose another --out")
    parent = target.parent
    if not parent.is_dir():
        raise EdgeError(f"output directory '{path.parent}' does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise EdgeError(f"output directory '{path.parent}' is not writable; choose another --out")
    return target


class WavSink:
    """Mono 16-bit PCM WAV written chunk by chunk.

    To a file: into a hidden sibling, its header completed and the sibling renamed over the file on `close()`,
    so the file appears only whole; `abort()` (or an exception in a ``with`` block) leaves nothing. To a stream
    (`path` None: stdout, or `stream` given for a FIFO or device): the header says "length unknown" (the
    0xFFFFFFFF sizes that players and sox read as "until the end") and each chunk goes out as it comes.
    """

    def __init__(self, out: str | Path, sample_rate: int, force: bool = False):
        self.target = check_audio_out(out, force)
        self.rate, self.samples = sample_rate, 0
        self.tmp: Path | None = None
        if self.target is None:
            self.file: BinaryIO = sys.stdout.buffer if str(out) == STDOUT else open(out, "wb")  # noqa: SIM115
            self._own = str(out) != STDOUT
        else:
            clean_leftovers(self.target)
            self.tmp = staging(self.target, directory=False)
            self.file = open(self.tmp, "wb")  # noqa: SIM115
            self._own = True
        self.file.write(self._header(None))

    def _header(self, samples: int | None) -> bytes:
        data = 0xFFFFFFFF if samples is None else 2 * samples
        riff = 0xFFFFFFFF if samples is None else 36 + data
        return (b"RIFF" + riff.to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
                + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + self.rate.to_bytes(4, "little")
                + (2 * self.rate).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
                + b"data" + data.to_bytes(4, "little"))

    def write(self, pcm16: bytes) -> None:
        self.file.write(pcm16)
        self.samples += len(pcm16) // 2
        if self.tmp is None:
            self.file.flush()

    def close(self) -> None:
        if self.tmp is not None:
            self.file.seek(0)
            self.file.write(self._header(self.samples))
            self.file.close()
            os.replace(self.tmp, self.target)
            self.tmp = None
        elif self._own:
            self.file.close()
        else:
            self.file.flush()

    def abort(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        elif self._own:
            with contextlib.suppress(OSError):
                self.file.close()

    def __enter__(self) -> WavSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type is not None else self.close()


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Build a directory output in a hidden sibling; it replaces `out` only if the body completes."""
    tmp = staging(out, directory=True)
    try:
        yield tmp
        commit_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
