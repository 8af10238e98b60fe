"""Audio metrics: how far one signal is from another (SNR, log-mel distance), and the speech-like test signal
they are measured on. Numpy only: quantization's accuracy, the codec's training recipe and the benchmarks use
them alike."""

from __future__ import annotations

import numpy as np


def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sr / 2)), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, mid, hi = hz[i], hz[i + 1], hz[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


def log_mel(audio: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 64) -> np.ndarray:
    """Log-mel spectrogram in dB (frames, n_mels), floored at -100 dB."""
    audio = np.asarray(audio, np.float64)
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return 10 * np.log10(np.maximum(power @ mel_filters(sr, n_fft, n_mels).T, 1e-10))


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-noise ratio of `x` against `ref`, in dB (inf when they are equal)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - x) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(float(np.sum(ref**2)), 1e-30) / noise)


def compare_audio(a: np.ndarray, b: np.ndarray, sr: int) -> dict[str, float]:
    snr = snr_db(a, b)
    return {"snr_db": snr, "log_mel_db": float(np.mean(np.abs(log_mel(a, sr) - log_mel(b, sr)))),
            "seconds": a.size / sr}


def test_signal(sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """A fixed speech-like signal: a voiced glide (harmonics under syllable-rate bursts) plus a little noise."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 16))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.1 * envelope * voiced + 0.01 * noise).astype(np.float32)


def graph_agreement(ref, other, calls: list[dict[str, np.ndarray]]) -> dict:
    """Session `other` against session `ref` of the same graph on the same recorded feeds: the median SNR of its
    main output (logits, else audio; calls whose reference is all zero, such as a codec's first silent frame,
    are left out), the top-1 agreement of logits, and whether every output kept the reference's dtype and
    shape."""
    top1, snr, same_contract = [], [], True
    for feeds in calls:
        a, b = ref.run(feeds), other.run(feeds)
        key = "logits" if "logits" in a else "audio"
        x, y = a[key], b[key]
        if key == "logits":
            top1.append(np.argmax(x.reshape(-1, x.shape[-1]), -1) == np.argmax(y.reshape(-1, y.shape[-1]), -1))
        if np.any(x):
            snr.append(snr_db(x, y))
        same_contract &= all(b[n].dtype == a[n].dtype and b[n].shape == a[n].shape for n in a)
    return {"calls": len(calls), "median_snr_db": float(np.median(snr)), "same_contract": same_contract,
            **({"top1_agreement": float(np.mean(np.concatenate(top1)))} if top1 else {})}
