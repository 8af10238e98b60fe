"""Long text → chunks that each fit one prompt: sentences first, then clauses, then words, never mid-word.

A voice's prompt holds a fixed number of tokens (`prompt_capacity`) and its KV cache a fixed number of
positions (prompt + frames), so a long text is spoken chunk by chunk. Sentences come from `sentencex`
(MIT, maintained, ~300 languages; numbers, abbreviations and quotes are its job: "Dr. Smith paid $3.50." is
one sentence). A sentence that does not fit is packed greedily from its clauses (split after , ; : and at
dashes), and a clause that does not fit from its words. Whether a piece fits is the caller's test
(`fits`), which knows the tokenizer and the capacities.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

# Clause boundaries: after , ; : (and their full-width forms) and before a spaced dash, each followed by space.
_CLAUSE = re.compile(r"(?<=[,;:，；：])\s+|\s+(?=[—–-]\s)")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Piece:
    """One chunk of text to speak with one prompt; `sentence_end` when a sentence ends with it (a pause may
    follow), False when the sentence goes on in the next piece."""

    text: str
    sentence_end: bool


def sentences(text: str, language: str = "en") -> list[str]:
    """The sentences of `text`, each with its whitespace collapsed to single spaces (line breaks inside a
    sentence are the file's wrapping, not the speaker's); blank lines end a sentence."""
    import sentencex

    out = []
    for s in sentencex.segment(language, text):
        s = _SPACE.sub(" ", s).strip()
        if s:
            out.append(s)
    return out


def chunk_text(text: str, fits: Callable[[str], bool], language: str = "en") -> list[Piece]:
    """Split `text` into pieces that each satisfy `fits`: one sentence per piece where it fits, else its
    clauses packed greedily, else its words packed greedily. Joining a sentence's pieces with spaces gives
    the sentence back. A single word that does not fit is an `EdgeError` (words are never cut)."""
    pieces: list[Piece] = []
    for sentence in sentences(text, language):
        parts = [sentence] if fits(sentence) else _pack(sentence, fits)
        pieces += [Piece(p, i == len(parts) - 1) for i, p in enumerate(parts)]
    return pieces


def _pack(sentence: str, fits: Callable[[str], bool]) -> list[str]:
    """A too-long sentence as clauses packed greedily; a too-long clause as words packed greedily."""
    units: list[str] = []
    for clause in _CLAUSE.split(sentence):
        units += [clause] if fits(clause) else _words(clause, fits)
    return _greedy(units, fits)


def _words(clause: str, fits: Callable[[str], bool]) -> list[str]:
    words = clause.split(" ")
    for w in words:
        if not fits(w):
            shown = w if len(w) <= 40 else w[:37] + "..."
            raise EdgeError(f"the word '{shown}' ({len(w)} characters) alone does not fit this voice's prompt; "
                            "words are never cut: put spaces in it or re-export with a larger --prompt-capacity")
    return _greedy(words, fits)


def _greedy(units: list[str], fits: Callable[[str], bool]) -> list[str]:
    """Join neighbouring units with spaces into as few pieces as fit (each unit fits on its own), and among
    those splits the one whose longest piece is shortest: balanced pieces, not a full one and a stub."""
    fewest = _join(units, fits, None)
    if len(fewest) <= 1:
        return fewest
    lo, hi = max(len(u) for u in units), max(len(p) for p in fewest)
    while lo < hi:  # the piece count only falls as the length limit rises
        mid = (lo + hi) // 2
        if len(_join(units, fits, mid)) <= len(fewest):
            hi = mid
        else:
            lo = mid + 1
    return _join(units, fits, lo)


def _join(units: list[str], fits: Callable[[str], bool], limit: int | None) -> list[str]:
    """Greedy: each unit joins the piece before it while the result fits (and is at most `limit` long)."""
    out: list[str] = []
    for u in units:
        joined = f"{out[-1]} {u}" if out else ""
        if out and (limit is None or len(joined) <= limit) and fits(joined):
            out[-1] = joined
        else:
            out.append(u)
    return out


def read_text(path: str | Path, what: str = "text file") -> str:
    """A UTF-8 text file's contents (`-`: standard input), refusing what is not text: a missing file, a
    directory, binary data (a NUL byte or bytes that are not UTF-8) and a file with nothing to speak."""
    if str(path) == "-":
        data, name = sys.stdin.buffer.read(), "standard input"
    else:
        p = Path(path)
        if p.is_dir():
            raise EdgeError(f"{what} '{p}' is a directory; give a UTF-8 text file")
        try:
            data, name = p.read_bytes(), f"{what} '{p}'"
        except FileNotFoundError:
            raise EdgeError(f"{what} '{p}' does not exist") from None
    if (nul := data.find(b"\0")) >= 0:
        raise EdgeError(f"{name} is binary (a NUL byte at offset {nul}); give a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise EdgeError(f"{name} is not UTF-8 text (byte {e.start}); convert it, e.g. "
                        "iconv -t utf-8") from None
    if not text.strip():
        raise EdgeError(f"{name} is empty; give the words to speak")
    return text
