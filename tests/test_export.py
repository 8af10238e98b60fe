"""Export end to end: the bundle's graphs, driven by the runtime, reproduce transformers' CSM generate."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from edge.bundle import load_bundle
from edge.errors import EdgeError
from edge.export.build import export_bundle
from edge.export.families.checkpoint import recommended_sampling
from edge.export.families.csm import load_reference
from edge.runtime.loop import Voice
from edge.runtime.sampler import SamplingConfig
from edge.runtime.tokenizers import load_tokenizer
from tests.helpers import edge_cli

FRAMES = 24
TEXT = "Hello from edge."


@pytest.fixture(scope="module")
def hf_codes(tiny_bundle):
    """Greedy codes from transformers' own CSM generate, on the weights the bundle carries."""
    bundle = load_bundle(tiny_bundle)
    model = load_reference(bundle.path("reference"))
    ids = torch.tensor([load_tokenizer(bundle).encode(TEXT, 0)])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, do_sample=False, depth_decoder_do_sample=False, max_new_tokens=FRAMES)
    return out[0].tolist()


@pytest.mark.parametrize("backend", ["torch", "onnx", "executorch"])
def test_greedy_tokens_match_transformers_generate(tiny_bundle, hf_codes, backend):
    voice = Voice.load(tiny_bundle, backend)
    stream = voice.stream(TEXT, sampling=SamplingConfig(temperature=0), max_seconds=FRAMES / 12.5)
    list(stream)
    assert len(hf_codes) >= 20
    assert stream.codes == hf_codes


def test_manifest_contract(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.backends() == ["onnx", "executorch", "torch"]
    assert set(bundle.graphs) == {"lm_prefill", "lm_step", "depth_step", "codec_decoder"}
    m = bundle.model
    for key in ("sample_rate", "frame_rate", "samples_per_frame", "num_codebooks", "codebook_size",
                "prompt_capacity", "kv_capacity", "end_of_speech", "speakers"):
        assert key in m, key
    assert (m["sample_rate"], m["frame_rate"], m["samples_per_frame"]) == (24000, 12.5, 1920)
    for name, g in bundle.graphs.items():
        assert g["recipe"] == "fp32"
        for backend, err in g["parity_max_abs_err"].items():
            assert err < 1e-3, (name, backend, err)
    # lm_step holds the cache lm_prefill produces, as a written state (a step returns its slot, not the cache)
    prefill_kv = next(t for t in bundle.graphs["lm_prefill"]["outputs"] if t["name"] == "kv")
    assert bundle.graphs["lm_step"]["state"] == [{**prefill_kv, "write": {"axis": 4, "index": "slots"}}]


def test_mimi_bundle(tmp_path):
    bundle = export_bundle("mimi-tiny", tmp_path / "mimi", ["onnx"])
    assert set(bundle.graphs) == {"codec_encoder", "codec_decoder"}
    r = edge_cli("speak", "hi", "--bundle", str(bundle.root), "--out", str(tmp_path / "x.wav"))
    assert r.returncode == 2 and "not a voice" in r.stderr.decode()


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(EdgeError, match="must be larger"):
        export_bundle("csm-tiny", tmp_path / "b", ["onnx"], options={"prompt_capacity": 64, "kv_capacity": 32})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("config", "sampling"), [
    ({"_from_model_config": True, "bos_token_id": 256}, {}),  # what transformers writes for every model
    ({"do_sample": False}, {"temperature": 0.0}),
    ({"do_sample": True, "temperature": 0.6, "top_k": 20}, {"temperature": 0.6, "top_k": 20}),
])
def test_recommended_sampling_comes_from_generation_config(tmp_path, config, sampling):
    assert recommended_sampling(None) == {} and recommended_sampling(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert recommended_sampling(tmp_path) == sampling
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(EdgeError, match="generation_config.json is not valid JSON"):
        recommended_sampling(tmp_path)


def test_bad_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for setup, message in [
        (lambda: None, "has no config.json"),
        (lambda: (ckpt / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]})),
         "is a LlamaForCausalLM, not a CsmForConditionalGeneration"),
        (lambda: [(ckpt / "config.json").write_text(json.dumps({"architectures": ["CsmForConditionalGeneration"]})),
                  (ckpt / "pytorch_model.bin").write_bytes(b"pickle")], "pickle-only weights: pytorch_model.bin"),
    ]:
        setup()
        r = edge_cli("export", "csm-tiny", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"))
        err = r.stderr.decode()
        assert r.returncode == 2 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
    r = edge_cli("export", "nope", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr.decode()


def test_export_with_recipe(tmp_path):
    r = edge_cli("export", "csm-tiny", "--backend", "onnx", "--recipe", "lm=int4,codec=fp16", "--group-size", "64",
                 "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr.decode()
    graphs = load_bundle(tmp_path / "q").graphs
    assert {n: g["recipe"] for n, g in graphs.items()} == {
        "lm_prefill": "int4-g64", "lm_step": "int4-g64", "depth_step": "fp32", "codec_decoder": "fp16"}
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # the fp32 intermediate is gone
    bad = edge_cli("export", "csm-tiny", "--recipe", "lm=int9", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown recipe 'int9'" in bad.stderr.decode()
    assert not (tmp_path / "bad").exists()


def test_terminated_export_leaves_nothing(tmp_path):
    """SIGTERM in the middle of an export (a scheduler, `kill`) unwinds like Ctrl-C: no half bundle."""
    proc = subprocess.Popen([sys.executable, "-m", "edge", "export", "csm-tiny", "--out", str(tmp_path / "b")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(tmp_path.glob(".b.*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
