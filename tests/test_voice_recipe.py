"""The built-in voice's recipe (recipes/voice) on a handful of synthetic samples: data format, the Piper
input layout, codec and LM training resumed from checkpoints, and the trained weights exported by edge."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edge.runtime.audio import write_wav
from edge.runtime.metrics import test_signal as speech_like
from recipes.voice import data, ship, train_codec, train_lm
from recipes.voice.common import load_codec, quality_module


def test_wordnet_sentences_are_cleaned_and_split_stably(tmp_path):
    synset = '00001 03 n 01 x 0 000 | a gloss; "the cat sat on the mat"; "odd (chars) here"; "too short"\n'
    (tmp_path / "data.noun").write_text("  1 licence header\n" + synset)
    for pos in ("verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text('00002 29 v 01 y 0 000 | g; "She sighed sadly when it rained!"\n')
    sentences = data.wordnet_sentences(tmp_path)
    assert sentences == ["She sighed sadly when it rained!", "The cat sat on the mat."]
    many = [f"Sentence number {i} is here." for i in range(400)]
    train, test = data.split(many, 1000, 1000)
    assert not set(train) & set(test) and len(train) + len(test) == 400
    assert test and all(data.is_test(s) for s in test)
    # Asking for fewer never moves a sentence across the split.
    small_train, small_test = data.split(many, 10, 3)
    assert set(small_train) <= set(train) and set(small_test) <= set(test)


def test_piper_phoneme_id_layout():
    voice = object.__new__(data.PiperVoice)
    voice.ids = {"_": [0], "^": [1], "$": [2], " ": [3], "a": [14], "b": [15]}
    voice.unknown = {}
    assert voice.phoneme_ids("ab a?") == [1, 0, 14, 0, 15, 0, 3, 0, 14, 0, 2]
    assert voice.unknown == {"?": 1}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng (apt) is not installed")
def test_piper_teacher_speaks_a_sentence(tmp_path):
    voice = data.PiperVoice.joe()
    [(utt, _)] = list(data.generate(voice, ["Pepper makes me sneeze."], tmp_path))
    assert 0.8 < utt.seconds < 4.0 and (tmp_path / utt.wav).is_file()
    data.write_manifest(tmp_path / "test.jsonl", [utt])
    assert data.read_manifest(tmp_path / "test.jsonl") == [utt]
    line = json.loads((tmp_path / "test.jsonl").read_text())
    assert set(line) == {"id", "text", "wav", "seconds"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voice-data")
    utts = []
    for i, text in enumerate(["Hi there.", "Pepper makes me sneeze.", "Go home now."]):
        rel = f"wav/{i}.wav"
        (root / "wav").mkdir(exist_ok=True)
        write_wav(root / rel, speech_like(24000, 0.5 + 0.25 * i) * (1 + i), 24000)
        utts.append(data.Utterance(str(i), text, rel, 0.5 + 0.25 * i))
    data.write_manifest(root / "train.jsonl", utts)
    return root


def _codec_args(corpus: Path, out: Path, steps: int):
    return train_codec.parser().parse_args(["--data", str(corpus), "--out", str(out), "--steps", str(steps),
                                            "--batch", "2", "--frames", "2", "--log-every", "1", "--save-every", "2",
                                            "--autoencoder-steps", "2"])  # resumes across the k-means


@pytest.fixture(scope="module")
def codec_runs(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """The same 4 steps run straight through and as 2 steps, then resumed for 2 more."""
    root = tmp_path_factory.mktemp("codec")
    straight = train_codec.train(_codec_args(corpus, root / "straight", 4))
    train_codec.train(_codec_args(corpus, root / "resumed", 2))
    resumed = train_codec.train(_codec_args(corpus, root / "resumed", 4))
    return straight, resumed


def test_codec_resume_reproduces_an_uninterrupted_run(codec_runs):
    straight, resumed = codec_runs
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = json.loads((resumed / "state.json").read_text())
    assert state["step"] == 4
    log = [json.loads(line) for line in (resumed.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (resumed.parent / "loss.png").stat().st_size > 0


def test_adversarial_run_resumes_with_its_discriminator(corpus, tmp_path):
    """With --w-adv the discriminator and its optimizer are part of the checkpoint: a resumed run matches."""
    def run(out, steps, *extra):
        args = _codec_args(corpus, out, steps)
        args.w_adv, args.autoencoder_steps = 1.0, 1
        for key, value in extra:
            setattr(args, key, value)
        return train_codec.train(args)

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4)
    for name in ("model.safetensors", "discriminator.safetensors", "discriminator_optimizer.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    log = [json.loads(line) for line in (resumed.parent / "log.jsonl").read_text().splitlines()]
    assert all({"disc", "adv", "feat"} <= set(r) for r in log)
    with pytest.raises(SystemExit, match="has no discriminator to resume"):
        args = _codec_args(corpus, tmp_path / "plain", 2)
        train_codec.train(args)
        args.w_adv, args.steps = 1.0, 4
        train_codec.train(args)


def test_decoder_only_run_keeps_the_codes(corpus, codec_runs, tmp_path):
    """`--autoencoder-steps 0` from `--init`: encoder and codebooks stay, so an LM's codes stay valid."""
    args = train_codec.parser().parse_args([
        "--data", str(corpus), "--out", str(tmp_path / "tuned"), "--init", str(codec_runs[0]), "--steps", "2",
        "--batch", "2", "--frames", "2", "--save-every", "2", "--autoencoder-steps", "0", "--lr", "1e-2"])
    before, after = load_file(codec_runs[0] / "model.safetensors"), load_file(train_codec.train(args)
                                                                              / "model.safetensors")
    frozen = [k for k in before if k.startswith(("encoder", "quantizer", "downsample"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(SystemExit, match="give --init"):
        train_codec.train(train_codec.parser().parse_args(["--data", str(corpus), "--autoencoder-steps", "0"]))


@pytest.fixture(scope="module")
def widened_run(corpus, codec_runs, tmp_path_factory) -> Path:
    """A decoder-only run that widens codec_runs[0] to 24 filters: 1 step, then resumed for a second."""
    out = tmp_path_factory.mktemp("wide") / "run"

    def args(steps: int):
        return train_codec.parser().parse_args([
            "--data", str(corpus), "--out", str(out), "--init", str(codec_runs[0]), "--steps", str(steps),
            "--batch", "2", "--frames", "2", "--save-every", "1", "--autoencoder-steps", "0", "--num-filters", "24",
            "--lr", "1e-2"])

    train_codec.train(args(1))
    ckpt = train_codec.train(args(2))  # resumed at the width of its checkpoint
    resumed_narrower = args(3)
    resumed_narrower.num_filters = 16
    with pytest.raises(SystemExit, match="has 24 filters, not --num-filters 16"):
        train_codec.train(resumed_narrower)
    return ckpt


def test_widening_keeps_what_the_codec_computes(codec_runs, widened_run):
    """`--num-filters` wider than `--init`'s: same codes and (to float rounding) the same audio; then the wider
    decoder trains while encoder and codebooks stay."""
    narrow = load_codec(codec_runs[0]).eval()
    wide = train_codec.widen(narrow, 24).eval()
    assert wide.config.num_filters == 24 and wide.decoder.decoder_seanet.layers[0].conv.out_channels == 24 * 16
    x = torch.from_numpy(speech_like(24000, 0.5))[None, None]
    tuned = load_codec(widened_run).eval()
    assert tuned.config.num_filters == 24
    with torch.no_grad():
        codes = narrow.encode(x).audio_codes
        assert torch.equal(wide.encode(x).audio_codes, codes) and torch.equal(tuned.encode(x).audio_codes, codes)
        a, b = narrow.decode(codes).audio_values, wide.decode(codes).audio_values
        assert 10 * torch.log10(a.pow(2).sum() / (a - b).pow(2).sum()) > 80  # dB
        assert not torch.allclose(tuned.decode(codes).audio_values, b)
    with pytest.raises(SystemExit, match="can only widen"):
        train_codec.widen(wide, 16)


def test_trained_codec_exports_and_round_trips(codec_runs, tmp_path):
    from edge.export.build import export_bundle

    bundle = export_bundle("mimi-tiny", tmp_path / "codec", ["onnx"], checkpoint=codec_runs[0])
    assert bundle.model["codebook_size"] == train_codec.VOICE_MIMI["codebook_size"]
    quality = quality_module()
    clip = speech_like(24000, 0.4)
    result, [rebuilt] = quality.codec_fidelity(bundle.root, [clip], 24000)
    assert np.isfinite(result["snr_db"]) and result["log_mel_db"] >= 0 and rebuilt.shape == clip.shape


def test_lm_trains_resumes_and_exports_as_a_voice(corpus, codec_runs, widened_run, tmp_path, caplog):
    from edge.export.build import export_bundle
    from edge.runtime.loop import Voice
    from edge.runtime.sampler import SamplingConfig

    def args(steps: int):
        return train_lm.parser().parse_args([
            "--data", str(corpus), "--codec", str(codec_runs[0]), "--out", str(tmp_path / "lm"), "--steps",
            str(steps), "--batch", "2", "--hidden", "32", "--layers", "1", "--depth-hidden", "16",
            "--depth-layers", "1", "--log-every", "1", "--save-every", "10", "--dev-every", "5"])

    assert [train_lm.is_dev(t, 5) for t in ("Hi there.", "Pepper makes me sneeze.", "Go home now.")] == [
        False, True, False]  # the dev utterance is never a training one
    train_lm.train(args(2))
    [cache] = corpus.glob("codes-*.pt")  # the codes are encoded once, and the resumed run reads them
    caplog.set_level(logging.INFO, "recipes.voice.train_lm")
    ckpt = train_lm.train(args(3))
    assert f"from {cache}" in caplog.text and list(corpus.glob("codes-*.pt")) == [cache]
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3
    log = [json.loads(line) for line in (ckpt.parent / "log.jsonl").read_text().splitlines()]
    dev = [r for r in log if "dev_backbone" in r]
    assert [r["step"] for r in dev] == [2, 3]  # one per checkpoint, each run's last included
    assert all(np.isfinite(r["dev_backbone"]) and np.isfinite(r["dev_depth"]) for r in dev)
    best = min(dev, key=lambda r: r["dev_backbone"] + r["dev_depth"])["step"]  # kept as runs/lm/best
    assert json.loads((ckpt.parent / "best" / "state.json").read_text())["step"] == best
    shipped = ship.ship(ckpt, codec_runs[1], tmp_path / "edge-voice")  # the same codec, resumed: equal weights
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                         "training.json"]
    assert json.loads((shipped / "training.json").read_text())["lm"]["steps"] == 3
    # A new LM with the codec of a shipped voice: the codec's record is kept from that voice.
    again = json.loads((ship.ship(ckpt.parent / "best", shipped, tmp_path / "again") / "training.json").read_text())
    assert again["codec"] == json.loads((shipped / "training.json").read_text())["codec"]
    assert again["lm"]["steps"] == best
    # A widened codec codes as the LM's did, so it ships, with its own config; a codec with other codes does not.
    widened = ship.ship(ckpt, widened_run, tmp_path / "widened")
    assert json.loads((widened / "config.json").read_text())["codec_config"]["num_filters"] == 24
    codec_record = json.loads((widened / "training.json").read_text())["codec"]
    assert codec_record["steps"] == 2 and codec_record["init_training"]["steps"] == 4  # the run it widened
    with pytest.raises(SystemExit, match="codes audio differently"):
        other = _codec_args(corpus, tmp_path / "other", 3)
        other.seed = 1
        ship.ship(ckpt, train_codec.train(other), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    bundle = export_bundle("csm-tiny", tmp_path / "voice", ["onnx"], checkpoint=widened)
    assert bundle.manifest["sampling"] == {"temperature": 0.0}  # ship's default recommendation: greedy
    assert bundle.manifest["tokenizer"]["kind"] == "bytes"
    audio, stats = Voice(bundle).synthesize("Hi there.", sampling=SamplingConfig(temperature=0), max_seconds=0.4)
    assert stats.frames >= 1 and audio.size == stats.frames * 1920


def test_lm_grows_deeper_computing_what_it_did(corpus, codec_runs, tmp_path):
    from transformers import CsmForConditionalGeneration

    sizes = {"hidden": 32, "depth_hidden": 16}
    codec = load_codec(codec_runs[0])
    trained = train_lm.build_lm(codec, 3, layers=1, depth_layers=1, **sizes).eval()
    deeper = train_lm.build_lm(codec, 0, layers=3, depth_layers=2, **sizes)
    train_lm.init_from(deeper, trained)
    prompts, codes = [[256, 72, 105, 257], [256, 71, 111, 33, 257]], [torch.randint(1, 256, (n, 8)) for n in (5, 3)]
    with torch.no_grad():
        batch = train_lm.make_batch(deeper.eval(), prompts, codes, [0, 1])
        ours, theirs = (m(inputs_embeds=batch[0], labels=batch[1]) for m in (deeper, trained))
    assert torch.equal(ours.logits, theirs.logits) and ours.depth_decoder_loss == theirs.depth_decoder_loss
    for wrong, match in (({"layers": 1, "depth_layers": 1, "hidden": 64, "depth_hidden": 16}, "only be made deeper"),
                         ({"layers": 1, "depth_layers": 0, **sizes}, "not shallower")):
        with pytest.raises(SystemExit, match=match):
            train_lm.init_from(train_lm.build_lm(codec, 0, **wrong), trained)
    # The recipe's --init takes the shallower checkpoint when --layers asks for more.
    trained.save_pretrained(tmp_path / "shallow")
    ckpt = train_lm.train(train_lm.parser().parse_args([
        "--data", str(corpus), "--codec", str(codec_runs[0]), "--init", str(tmp_path / "shallow"), "--out",
        str(tmp_path / "deep"), "--steps", "1", "--batch", "2", "--hidden", "32", "--layers", "2",
        "--depth-hidden", "16", "--depth-layers", "1", "--dev-every", "0"]))
    assert CsmForConditionalGeneration.from_pretrained(ckpt).config.num_hidden_layers == 2


def test_depth_only_run_trains_a_new_depth_decoder_for_a_frozen_backbone(corpus, codec_runs, tmp_path):
    from transformers import CsmForConditionalGeneration

    codec = load_codec(codec_runs[0])
    train_lm.build_lm(codec, 3, hidden=32, layers=1, depth_hidden=16, depth_layers=1).save_pretrained(tmp_path / "lm")
    trained = CsmForConditionalGeneration.from_pretrained(tmp_path / "lm")

    def args(steps: int, *more: str):
        return train_lm.parser().parse_args([
            "--data", str(corpus), "--codec", str(codec_runs[0]), "--out", str(tmp_path / "depth"), "--steps",
            str(steps), "--hidden", "32", "--layers", "1", "--depth-hidden", "24", "--depth-layers", "2",
            "--depth-only", "--frames", "8", "--save-every", "10", "--dev-every", "5", *more])

    with pytest.raises(SystemExit, match="give --init"):
        train_lm.train(args(1))
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        train_lm.train(args(1, "--init", str(tmp_path / "no-such-run")))
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        ship.ship(tmp_path / "no-such-run", codec_runs[0], tmp_path / "refused")
    train_lm.train(args(2, "--init", str(tmp_path / "lm")))
    ckpt = train_lm.train(args(3))  # resumed: the run needs --init only to start
    model = CsmForConditionalGeneration.from_pretrained(ckpt)
    assert model.config.depth_decoder_config.hidden_size == 24
    ours, theirs = model.state_dict(), trained.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if not k.startswith("depth_decoder.")
               or k.startswith("depth_decoder.model.embed_tokens."))  # the backbone and what it shares: frozen
    log = [json.loads(line) for line in (ckpt.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "dev_depth" in r] == [2, 3] and all("dev_backbone" not in r for r in log)


def test_diagnose_decodes_teacher_forced_variants(corpus, codec_runs, tmp_path):
    from recipes.voice import diagnose

    codec = load_codec(codec_runs[0])
    lm = train_lm.build_lm(codec, 3, hidden=32, layers=1, depth_hidden=16, depth_layers=1).eval()
    lm.save_pretrained(tmp_path / "lm")
    states, first = torch.randn(5, 32), torch.randint(1, 256, (5,))
    frames = train_lm.depth_greedy(lm, states, first)
    assert frames.shape == (5, 8) and torch.equal(frames[:, 0], first)
    result = diagnose.diagnose(tmp_path / "lm", corpus / "train.jsonl", limit=2)
    assert result["sentences"] == 2 and len(result["top1_accuracy_per_codebook"]) == 8
    assert set(result["teacher_forced_wer"]) == {"teacher_codes", "backbone", "depth_decoder", "lm"}
    assert all(v >= 0 for v in result["teacher_forced_wer"].values())


def test_wer_counts_word_edits():
    quality = quality_module()
    assert quality.words("Hello, World's end-game!") == ["hello", "world's", "end", "game"]
    assert quality.wer(["the cat sat", "a b"], ["the bat sat down", "a b"]) == pytest.approx(2 / 5)


@pytest.mark.parametrize(("module", "argv", "message"), [
    ("train_lm", ["--batch", "0"], "argument --batch: 0 is too small: give at least 1"),
    ("train_lm", ["--audio-dropout", "1"], "argument --audio-dropout: 1 is out of range"),
    ("train_lm", ["--lr", "0"], "argument --lr: 0 is out of range: give a number above 0"),
    ("train_codec", ["--frames", "x"], "argument --frames: 'x' is not a whole number"),
    ("train_codec", ["--w-mel", "-1"], "argument --w-mel: -1 is out of range"),
    ("data", ["--train", "-5"], "argument --train: -5 is too small: give at least 0"),
    ("ship", ["--temperature", "nan"], "argument --temperature: nan is out of range"),
    ("diagnose", ["--limit", "0"], "argument --limit: 0 is too small"),
])
def test_out_of_range_flags_are_one_line_errors(module, argv, message, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", [module, *argv])
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"recipes.voice.{module}").main()
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_lm_code_crops_hold_the_audio_under_their_codes():
    spf, gen = 4, torch.Generator().manual_seed(0)
    codes = [torch.arange(n)[:, None].repeat(1, 3) for n in (5, 9)]  # frame j's codes are j
    audio = [np.repeat(np.arange(n, dtype=np.float32), spf) for n in (5, 9)]  # and so are its samples
    crops, truth = train_codec.lm_code_crops(codes, audio, 6, 3, spf, gen)
    assert crops.shape == (6, 3, 3) and truth.shape == (6, 1, 12)
    assert torch.equal(truth[:, 0, ::spf], crops[:, 0].float())


def test_decoder_tunes_on_the_codes_an_lm_predicts(corpus, codec_runs, tmp_path, caplog):
    codec = load_codec(codec_runs[0])
    lm = train_lm.build_lm(codec, 3, hidden=32, layers=1, depth_hidden=16, depth_layers=1).eval()
    lm.save_pretrained(tmp_path / "lm")
    # The codes cache is found from the codec alone and from the codec inside an LM (whose config has no dtype).
    key = train_lm.cache_key(codec, corpus / "train.jsonl", 8)
    assert train_lm.cache_key(lm.codec_model, corpus / "train.jsonl", 8) == key
    utts, codes = train_lm.load_codes(codec, corpus / "train.jsonl", 8)
    prompts = train_lm.text_prompts(utts)
    predicted = train_lm.predicted_codes(lm, prompts, codes)
    for i in range(len(codes)):  # one utterance at a time predicts the same frames as all at once
        states, _ = train_lm.backbone_states(lm, prompts, codes, [i])
        alone = train_lm.depth_greedy(lm, states, lm.lm_head(states).argmax(-1))[:-1]
        assert predicted[i].shape == codes[i].shape and torch.equal(predicted[i], alone)

    def args(out: Path, steps: int, *extra: str):
        return train_codec.parser().parse_args([
            "--data", str(corpus), "--out", str(out), "--init", str(codec_runs[0]), "--steps", str(steps),
            "--batch", "4", "--frames", "2", "--save-every", "2", "--autoencoder-steps", "0", "--lr", "1e-2",
            "--lm-codes", str(tmp_path / "lm"), *extra])

    caplog.set_level(logging.INFO, "recipes.voice.train_lm")
    tuned = train_codec.train(args(tmp_path / "tuned", 2))
    [cache] = corpus.glob("lm-codes-*.pt")
    assert all(torch.equal(a, b) for a, b in zip(torch.load(cache), predicted, strict=True))
    before, after = load_file(codec_runs[0] / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder", "quantizer")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    caplog.clear()
    train_codec.train(args(tmp_path / "tuned", 4))  # resumed: the LM's codes come from the cache
    assert f"from {cache}" in caplog.text
    with pytest.raises(SystemExit, match="--lm-codes tunes the decoder"):
        train_codec.train(args(tmp_path / "both", 2, "--autoencoder-steps", "2"))
    other = _codec_args(corpus, tmp_path / "other", 3)
    other.seed = 1
    train_lm.build_lm(load_codec(train_codec.train(other))).save_pretrained(tmp_path / "other-lm")
    with pytest.raises(SystemExit, match="trained on another codec's codes"):
        train_codec.train(args(tmp_path / "refused", 2, "--lm-codes", str(tmp_path / "other-lm")))
