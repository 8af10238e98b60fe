"""CSM LM graphs (lm_prefill, lm_step, depth_step) against the transformers reference, on TINY_CSM."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from transformers import CsmConfig, CsmForConditionalGeneration

from edge.export.families.csm_lm import EOS_RULE, lm_graphs, lm_manifest
from edge.export.graph import DTYPES, Graph
from edge.presets import BYTE_VOCAB, TINY_CSM
from tests.helpers import GraphRunner

PROMPT_CAPACITY, KV_CAPACITY = 64, 192
FRAMES = 30
TOL = 1e-4


def text_ids() -> torch.Tensor:
    """Loosely what CsmProcessor gives for speaker 0 saying "hello world" (byte tokenizer)."""
    return torch.tensor([[BYTE_VOCAB["bos"], *b"[0]hello world"]])


def load(directory: Path) -> CsmForConditionalGeneration:
    return CsmForConditionalGeneration.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("csm_tiny")
    CsmForConditionalGeneration(CsmConfig(**TINY_CSM)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> CsmForConditionalGeneration:
    return load(checkpoint)


@pytest.fixture(scope="module")
def graphs(model: CsmForConditionalGeneration) -> dict[str, Graph]:
    return {g.name: g for g in lm_graphs(model, PROMPT_CAPACITY, KV_CAPACITY)}


def padded(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.full((1, PROMPT_CAPACITY), BYTE_VOCAB["pad"], dtype=torch.long)
    tokens[0, : ids.shape[1]] = ids[0]
    return tokens, torch.tensor([ids.shape[1]])


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --- A greedy driver over the three graphs (argmax everywhere), frame by frame -----------------------


def greedy_frame(depth: Graph, logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The K codes of one frame: codebook 0 from the backbone logits, the rest from depth_step."""
    num_codebooks = depth.state[0].shape[4]
    step = GraphRunner(depth)
    codes = [logits.argmax(-1)]
    step(hidden, codes[0], torch.tensor([0]))
    for p in range(1, num_codebooks):
        step_logits, _ = step(hidden, codes[-1], torch.tensor([p]))
        codes.append(step_logits.argmax(-1))
    return torch.cat(codes)


def greedy_generate(
    graphs: dict[str, Graph], ids: torch.Tensor, max_frames: int, manifest: dict
) -> torch.Tensor:
    """(frames, K) codes, stopping after the first end-of-speech frame (included) as HF generate does."""
    stop = manifest["end_of_speech"]
    assert stop["eos_rule"] == "all_but_last_codebook"
    tokens, length = padded(ids)
    logits, hidden, kv = graphs["lm_prefill"].module(tokens, length)
    step = GraphRunner(graphs["lm_step"])
    step.state.reset({"kv": kv.numpy()})
    position = int(length)
    frames = []
    for _ in range(max_frames):
        codes = greedy_frame(graphs["depth_step"], logits, hidden)
        frames.append(codes)
        if bool((codes[:-1] == stop["eos_token"]).all()):
            break
        logits, hidden, _ = step(codes.unsqueeze(0), torch.tensor([position]))
        position += 1
    return torch.stack(frames)


def hf_generate(model: CsmForConditionalGeneration, ids: torch.Tensor, frames: int) -> torch.Tensor:
    """HF greedy generation: (frames, K) codes (the text prompt is not part of the output)."""
    out = model.generate(input_ids=ids, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=frames)
    assert out.ndim == 3 and out.shape[0] == 1 and out.shape[2] == model.config.num_codebooks
    return out[0]


# --- Tests ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_specs_match_outputs(graphs: dict[str, Graph]) -> None:
    for g in graphs.values():
        outs = g.module(*g.example_args())
        specs = g.outputs + g.state
        assert len(outs) == len(specs), g.name
        for out, spec in zip(outs, specs, strict=True):
            shape = list(spec.shape)
            if spec.write is not None:  # a step returns one new slot of its cache
                assert spec.write == (4, "slots")
                shape[4] = 1
            assert list(out.shape) == shape, (g.name, spec.name)
            assert out.dtype == DTYPES[spec.dtype], (g.name, spec.name)


@torch.no_grad()
def test_prefill_matches_hf(model: CsmForConditionalGeneration, graphs: dict[str, Graph]) -> None:
    ids = text_ids()
    n = ids.shape[1]
    ref = model(input_ids=ids, output_hidden_states=True, use_cache=True)
    logits, hidden, kv = graphs["lm_prefill"].module(*padded(ids))
    assert max_err(logits, ref.logits[:, -1]) < TOL
    assert max_err(hidden, ref.hidden_states[-1][:, -1]) < TOL
    for i, layer in enumerate(ref.past_key_values.layers):
        assert max_err(kv[i, 0, :, :, :n], layer.keys) < TOL
        assert max_err(kv[i, 1, :, :, :n], layer.values) < TOL
    assert not kv[:, :, :, :, PROMPT_CAPACITY:].any()


@torch.no_grad()
def test_step_matches_hf(model: CsmForConditionalGeneration, graphs: dict[str, Graph]) -> None:
    ids = text_ids()
    ref = model(input_ids=ids, use_cache=True)
    cache = ref.past_key_values
    _, _, kv = graphs["lm_prefill"].module(*padded(ids))
    step = GraphRunner(graphs["lm_step"])
    step.state.reset({"kv": kv.numpy()})
    gen = torch.Generator().manual_seed(1)
    errs = []
    for frame in range(4):
        codes = torch.randint(0, model.config.vocab_size, (1, model.config.num_codebooks), generator=gen)
        ref = model(
            input_ids=codes.unsqueeze(1), past_key_values=cache, use_cache=True, output_hidden_states=True
        )
        cache = ref.past_key_values
        logits, hidden, _ = step(codes, torch.tensor([ids.shape[1] + frame]))
        errs += [max_err(logits, ref.logits[:, -1]), max_err(hidden, ref.hidden_states[-1][:, -1])]
    assert max(errs) < TOL, errs


@torch.no_grad()
def test_depth_step_matches_hf(model: CsmForConditionalGeneration, graphs: dict[str, Graph]) -> None:
    k, v = model.config.num_codebooks, model.config.vocab_size
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, model.config.hidden_size, generator=gen)
    codes = torch.randint(0, v, (k,), generator=gen)
    # HF: input [placeholder, c0, .., c_{K-2}] -> logits for codebooks 1..K-1 (position 0 is dropped).
    ids = torch.cat([torch.zeros(1, dtype=torch.long), codes[:-1]]).unsqueeze(0)
    ref = model.depth_decoder(input_ids=ids, backbone_last_hidden_state=hidden).logits  # (1, K-1, V)
    depth = graphs["depth_step"]
    step = GraphRunner(depth)
    logits, _ = step(hidden, codes[:1], torch.tensor([0]))
    assert not logits.any()  # position 0 has no codebook to predict
    for p in range(1, k):
        logits, _ = step(hidden, codes[p - 1 : p], torch.tensor([p]))
        assert max_err(logits, ref[:, p - 1]) < TOL, p


@torch.no_grad()
def test_greedy_generation_matches_hf(model: CsmForConditionalGeneration, graphs: dict[str, Graph]) -> None:
    ids = text_ids()
    manifest = lm_manifest(model, PROMPT_CAPACITY, KV_CAPACITY)
    ref = hf_generate(model, ids, FRAMES)
    ours = greedy_generate(graphs, ids, FRAMES, manifest)
    assert ours.shape[0] >= 20
    assert torch.equal(ours, ref)


@torch.no_grad()
def test_end_of_speech_ignores_last_codebook(checkpoint: Path) -> None:
    """Zeroed heads make every argmax 0 (codebook EOS) but the last codebook's: both sides stop at once."""
    model = load(checkpoint)
    model.lm_head.weight.zero_()
    model.depth_decoder.codebooks_head.weight[:-1].zero_()
    graphs = {g.name: g for g in lm_graphs(model, PROMPT_CAPACITY, KV_CAPACITY)}
    ref = hf_generate(model, text_ids(), 5)
    ours = greedy_generate(graphs, text_ids(), 5, lm_manifest(model, PROMPT_CAPACITY, KV_CAPACITY))
    assert ref.shape[0] == 1 and ref[0, -1] != 0
    assert torch.equal(ours, ref)


def test_manifest(model: CsmForConditionalGeneration) -> None:
    m = lm_manifest(model, PROMPT_CAPACITY, KV_CAPACITY)
    assert m["num_codebooks"] == TINY_CSM["num_codebooks"]
    assert m["audio_vocab_size"] == TINY_CSM["vocab_size"]
    assert m["codebook_pad_token_id"] == TINY_CSM["codebook_pad_token_id"]
    assert m["end_of_speech"] == {"eos_token": TINY_CSM["codebook_eos_token_id"], "eos_rule": EOS_RULE}
    assert m["text_tokens"]["bos"] == BYTE_VOCAB["bos"]
    assert (m["prompt_capacity"], m["kv_capacity"]) == (PROMPT_CAPACITY, KV_CAPACITY)


@pytest.mark.parametrize("name", ["lm_prefill", "lm_step", "depth_step"])
def test_exports(graphs: dict[str, Graph], name: str, tmp_path: Path) -> None:
    g = graphs[name]
    args = g.example_args()
    with torch.no_grad():
        expected = g.module(*args)
        program = torch.export.export(g.module, args, strict=False)
        for got, want in zip(program.module()(*args), expected, strict=True):
            assert max_err(got, want) < 1e-5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(g.module, args, dynamo=True, verbose=False)
    onnx_program.save(str(tmp_path / f"{name}.onnx"))
    assert (tmp_path / f"{name}.onnx").stat().st_size > 0
