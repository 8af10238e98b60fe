"""Text tokenizers: byte-level for the built-in presets, `tokenizer.json` for real checkpoints.

CSM prompts are ``[speaker]text`` wrapped in the tokenizer's begin/end-of-text tokens, as
Sesame's reference generator builds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edge.errors import EdgeError


class Tokenizer(Protocol):
    def encode(self, text: str, speaker: int) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus begin/end-of-text ids from the manifest."""

    def __init__(self, bos: int, eos: int):
        self.bos, self.eos = bos, eos

    def encode(self, text: str, speaker: int) -> list[int]:
        return [self.bos, *f"[{speaker}]{text}".encode(), self.eos]


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (the checkpoint's own), via the `tokenizers` library."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as _Tok

        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad files
            raise EdgeError(f"cannot read tokenizer {path}: {e}; re-export the bundle") from None

    def encode(self, text: str, speaker: int) -> list[int]:
        return self._tok.encode(f"[{speaker}]{text}", add_special_tokens=True).ids


def load_tokenizer(bundle) -> Tokenizer:
    spec = bundle.manifest["tokenizer"]
    if spec["kind"] == "bytes":
        return ByteTokenizer(spec["bos"], spec["eos"])
    if spec["kind"] == "hf":
        return HFTokenizer(bundle.path(spec["file"]))
    raise EdgeError(f"bundle {bundle.root} has no text tokenizer (family '{bundle.family}' does not speak text)")
