"""Audio I/O: float waveforms to 16-bit PCM, WAV files written atomically."""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path

import numpy as np

from edge.errors import EdgeError


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def check_writable(path: str | Path) -> Path:
    """Fail early, before any work, if `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise EdgeError(f"output '{path}' is a directory; give a file name such as out.wav")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgeError(f"output directory '{parent}' does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise EdgeError(f"output directory '{parent}' is not writable; choose another --out")
    return path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit PCM; the file appears only when complete."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(to_pcm16(audio))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV as float32 in [-1, 1] (first channel) and its sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise EdgeError(f"{path} is not 16-bit PCM; convert it first (e.g. sox in.wav -b 16 out.wav)")
            rate, ch = w.getframerate(), w.getnchannels()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError, FileNotFoundError) as e:
        raise EdgeError(f"cannot read WAV '{path}': {e}") from None
    return (data.reshape(-1, ch)[:, 0].astype(np.float32) / 32767.0), rate
