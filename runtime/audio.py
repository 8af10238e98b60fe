"""Audio I/O: float waveforms to 16-bit PCM, WAV files written atomically (through `edge.outputs.WavSink`)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from edge.errors import EdgeError


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit PCM; the file appears only when complete (replacing any file there: the policy checks of
    `edge speak --out` are `edge.outputs.check_audio_out`'s)."""
    from edge.outputs import WavSink

    with WavSink(path, sample_rate, force=True) as sink:
        sink.write(to_pcm16(audio))
    return Path(path)


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
