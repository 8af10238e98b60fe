"""Long text in one stream: chunking rules, one codec state across chunks, pauses, runaways, --file."""

from __future__ import annotations

import json
import logging
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import EdgeError
from edge.runtime.loop import MAX_TEXT_CHARS, FrameDecoder, Voice
from edge.runtime.sampler import SamplingConfig
from edge.runtime.text import Piece, chunk_text, read_text, sentences
from tests.helpers import edge_cli

GREEDY = SamplingConfig(temperature=0)
STORY = (
    "Dr. Smith paid $3.50. He said, \"Keep the change.\" The U.S. office opened at 9 a.m. on Jan. 5. "
    "It was a long day, full of meetings; the kind that drags on, hour after hour, until nobody remembers "
    "what the first one was about. Then he went home.\n\nA new paragraph starts here. Short. The end."
)


def fits_within(n: int):
    return lambda t: len(t) <= n


# --- chunking rules (no model) ---

def test_sentences_keep_numbers_abbreviations_and_quotes_together():
    assert sentences("Dr. Smith paid $3.50.") == ["Dr. Smith paid $3.50."]
    assert sentences(STORY)[:4] == [
        "Dr. Smith paid $3.50.", 'He said, "Keep the change."', "The U.S. office opened at 9 a.m. on Jan. 5.",
        "It was a long day, full of meetings; the kind that drags on, hour after hour, until nobody remembers what "
        "the first one was about.",
    ]
    # A file's line wrapping is not a sentence end, a blank line is.
    assert sentences("The wind\nblew hard\n\nNext part") == ["The wind blew hard", "Next part"]


def test_a_sentence_that_fits_is_one_piece():
    pieces = chunk_text("Dr. Smith paid $3.50. Then he left.", fits_within(40))
    assert pieces == [Piece("Dr. Smith paid $3.50.", True), Piece("Then he left.", True)]


def test_too_long_sentences_split_at_clauses_then_words():
    sentence = "It was a long day, full of meetings; the kind that drags on and on and on without any end in sight."
    pieces = chunk_text(sentence, fits_within(40))
    assert [p.text for p in pieces] == ["It was a long day, full of meetings;", "the kind that drags on and on",
                                        "and on without any end in sight."]
    assert [p.sentence_end for p in pieces] == [False, False, True]
    # As few pieces as fit, as even as can be: not a full piece and a stub.
    assert [p.text for p in chunk_text("aa bb cc dd ee ff gg hh ii", fits_within(20))] == [
        "aa bb cc dd ee", "ff gg hh ii"]
    # Clauses are packed together while they fit.
    assert [p.text for p in chunk_text("One, two, three, four.", fits_within(12))] == ["One, two,", "three, four."]
    # A dash between spaces is a clause boundary too.
    assert [p.text for p in chunk_text("Wait for it - here it comes now.", fits_within(20))] == [
        "Wait for it", "- here it comes now."]


def test_a_word_is_never_cut():
    with pytest.raises(EdgeError, match="alone does not fit"):
        chunk_text("A supercalifragilisticexpialidocious word.", fits_within(20))


def test_max_chars_caps_chunks_but_not_words(voice):
    text = "See https://example.com/a/long/path/index.html for more, if you like."
    assert [p.text for p, _ in voice.plan(text, max_chars=30)] == [
        "See", "https://example.com/a/long/path/index.html", "for more, if you like."]
    assert all(len(p.text) <= 20 for p, _ in voice.plan(STORY, max_chars=20) if " " in p.text)
    with pytest.raises(EdgeError, match="--max-chars must be >= 1"):
        voice.plan(text, max_chars=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=8), min_size=1, max_size=40),
       st.lists(st.sampled_from([" ", ", ", "; ", " - ", ". "]), min_size=40, max_size=40),
       st.integers(min_value=10, max_value=60))  # a word and its comma fit
def test_pieces_fit_and_give_the_text_back(words, seps, cap):
    text = "".join(w + s for w, s in zip(words, seps, strict=False)).strip()
    pieces = chunk_text(text, fits_within(cap))
    assert all(len(p.text) <= cap for p in pieces)
    assert pieces[-1].sentence_end
    assert " ".join(p.text for p in pieces).split() == text.split()  # every word, in order, none cut


def test_read_text(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffHello there.".encode())
    assert read_text(tmp_path / "bom.txt") == "Hello there."
    (tmp_path / "bin.txt").write_bytes(b"PK\x03\x04\x00\x00")
    with pytest.raises(EdgeError, match="is binary"):
        read_text(tmp_path / "bin.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(EdgeError, match="not UTF-8"):
        read_text(tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text(" \n\n ")
    with pytest.raises(EdgeError, match="is empty"):
        read_text(tmp_path / "blank.txt")
    with pytest.raises(EdgeError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(EdgeError, match="is a directory"):
        read_text(tmp_path)


# --- the chunked stream (csm-tiny) ---

@pytest.fixture(scope="module")
def voice(tiny_bundle):
    return Voice.load(tiny_bundle, "onnx")


def test_plan_fits_the_prompt(voice):
    m = voice.model
    text = " ".join([STORY] * 3)
    plan = voice.plan(text)
    assert len(plan) > 3 * len(sentences(STORY))  # the long sentence needed splitting at csm-tiny's 64 tokens
    for piece, tokens in plan:
        assert tokens == voice.tokenizer.encode(piece.text, 0)
        assert len(tokens) <= m["prompt_capacity"] < m["kv_capacity"]
    assert " ".join(p.text for p, _ in plan).split() == text.split()


def test_long_text_streams_whole_with_one_codec_state(voice):
    """A long text is one stream: its chunks' audio, pauses taken out, is exactly what one decoder gives for all
    the chunks' codes in a row (the codec state carries over every seam)."""
    m, sr, spf = voice.model, voice.sample_rate, voice.model["samples_per_frame"]
    stream = voice.stream(STORY, sampling=SamplingConfig(temperature=0.9, seed=4), max_seconds=1.0, pause=0.25)
    audio = np.concatenate(list(stream))
    chunks = stream.chunks
    assert [c.text for c in chunks] == [p.text for p, _ in voice.plan(STORY)]
    assert stream.stats.chunks == len(chunks) > 8 and stream.stats.frames == sum(c.frames for c in chunks)
    assert audio.size == sum(c.frames * spf for c in chunks) + round(sum(c.pause_after for c in chunks) * sr)
    assert stream.stats.audio_seconds == pytest.approx(audio.size / sr)

    eos = m["end_of_speech"]["eos_token"]
    frames = [f for f in stream.codes if not all(c == eos for c in f)]
    decode = FrameDecoder(m, voice.bundle.graphs["codec_decoder"], voice.sessions["codec_decoder"].run)
    one_stream = np.concatenate([decode([f]) for f in frames])
    spoken = [audio[round(c.start * sr): round(c.start * sr) + c.frames * spf] for c in chunks]
    np.testing.assert_array_equal(np.concatenate(spoken), one_stream)

    # Pauses only between sentences, each the length asked, silent but for ramps from and to the audio around it.
    for a, b in zip(chunks, chunks[1:], strict=False):
        end, nxt = round(a.start * sr) + a.frames * spf, round(b.start * sr)
        if a.text.endswith((".", '"')):
            assert a.pause_after == 0.25 and nxt - end == 0.25 * sr
            gap = audio[end:nxt]
            assert np.all(gap[200:-200] == 0)
            assert np.abs(gap).max() <= max(abs(audio[end - 1]), abs(audio[nxt]))
            # No step at either edge of the pause: the first and last gap samples are near their neighbours.
            assert abs(gap[0] - audio[end - 1]) <= abs(audio[end - 1]) / 100 + 1e-7
            assert abs(gap[-1] - audio[nxt]) <= abs(audio[nxt]) / 100 + 1e-7
        else:
            assert a.pause_after == 0 and nxt == end  # a clause seam: no pause at all


def test_first_audio_is_one_sentence(voice):
    """The first chunk comes out before the second chunk's prompt is even started."""
    stream = voice.stream(STORY, sampling=GREEDY, max_seconds=1.0)
    first = next(iter(stream))
    assert first.size == voice.model["samples_per_frame"]
    assert [c.text for c in stream.chunks] == ["Dr. Smith paid $3.50."]
    assert stream.stats.first_frames == 1


def test_same_seed_same_long_audio(voice):
    a, _ = voice.synthesize(STORY, sampling=SamplingConfig(seed=11), max_seconds=0.5)
    b, _ = voice.synthesize(STORY, sampling=SamplingConfig(seed=11), max_seconds=0.5)
    np.testing.assert_array_equal(a, b)


def test_runaway_chunks_are_reported(voice, caplog):
    """A chunk that reaches its frame limit without ending is a warning and a record, not a silent cut."""
    with caplog.at_level(logging.WARNING, logger="edge.runtime.loop"):
        stream = voice.stream("One sentence here. Another one there.", sampling=GREEDY, max_seconds=0.24)
        list(stream)
    max_frames = int(0.24 * voice.model["frame_rate"])
    runaways = stream.runaways()
    assert runaways and stream.stats.stopped_by == "max_seconds"
    for c in stream.chunks:
        assert (c.stopped_by == "max_seconds") == (c.frames == max_frames and c in runaways)
    warned = [r.getMessage() for r in caplog.records if "hit its frame limit" in r.getMessage()]
    assert len(warned) == len(runaways) and all(c.text in w for c, w in zip(runaways, warned, strict=True))


def test_bad_long_text(voice):
    with pytest.raises(EdgeError, match="the limit is"):
        voice.stream("x " * (MAX_TEXT_CHARS // 2 + 1))
    with pytest.raises(EdgeError, match="alone does not fit"):
        voice.stream("a" * 200)
    with pytest.raises(EdgeError, match="--pause must be"):
        voice.stream("Hello.", pause=-1)


def test_speak_file_json_lists_chunks(tiny_bundle, tmp_path):
    src = tmp_path / "story.txt"
    src.write_text(STORY)
    out = tmp_path / "story.wav"
    r = edge_cli("speak", "--file", str(src), "-b", str(tiny_bundle), "-o", str(out), "--max-seconds", "0.4",
                 "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    chunks = result["chunks"]
    assert [c["text"] for c in chunks] == [p.text for p, _ in Voice.load(tiny_bundle).plan(STORY)]
    assert all(set(c) >= {"text", "start", "frames", "stopped_by"} for c in chunks)
    assert [c["start"] for c in chunks] == sorted(c["start"] for c in chunks)
    assert len(result["warnings"]) == sum(c["stopped_by"] != "eos" for c in chunks)
    with wave.open(str(out)) as w:
        assert w.getnframes() == result["samples"]
    # The same text on standard input gives the same audio.
    r2 = edge_cli("speak", "-", "-b", str(tiny_bundle), "-o", str(tmp_path / "stdin.wav"), "--max-seconds", "0.4",
                  "--temperature", "0", stdin=STORY.encode())
    assert r2.returncode == 0, r2.stderr.decode()
    assert (tmp_path / "stdin.wav").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("content", "args", "message"), [
    (b"", [], "is empty"),
    (b"\x00\x01binary", [], "is binary"),
    (b"Hello.", ["extra text"], "one of them"),
])
def test_speak_file_bad_input(tiny_bundle, tmp_path, content, args, message):
    src = tmp_path / "in.txt"
    src.write_bytes(content)
    out = tmp_path / "x.wav"
    r = edge_cli("speak", *args, "--file", str(src), "-b", str(tiny_bundle), "-o", str(out))
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_chunk_cut_by_the_kv_cache_is_reported(voice, caplog):
    """A chunk whose prompt and frames outgrow the KV cache before it ends is a runaway too, and says so."""
    long = "x" * (voice.model["prompt_capacity"] - 8)  # one word: one chunk, as long as the prompt allows
    stream = voice.stream(long, sampling=SamplingConfig(temperature=1.0, seed=3), max_seconds=3600)
    with caplog.at_level(logging.WARNING, logger="edge.runtime.loop"):
        list(stream)
    (chunk,) = stream.chunks
    if chunk.stopped_by == "eos":
        pytest.skip("this seed ended on its own")
    assert chunk.stopped_by == stream.stats.stopped_by == "kv_capacity" and stream.runaways() == [chunk]
    assert chunk.frames == voice.model["kv_capacity"] - chunk.tokens and "--kv-capacity" in caplog.text
