"""NPUs: NPU-clean graphs, the npu recipes, the qnn backend (Snapdragon HTP, emulated on x86 by onnxruntime-qnn)
and the coreml backend (ExecuTorch lowered to Core ML), on csm-tiny.

csm-tiny has random weights and nearly flat logits: greedy codes flip on tiny differences and a flipped code
changes every later frame, so the HTP is compared with the CPU graph by graph on the same inputs (teacher
forced), and the free-running codes only for the frames before the first flip. Thresholds were set from measured
values (in brackets, this machine) with margin.
"""

from __future__ import annotations

import gc
import sys
import wave

import numpy as np
import onnx
import pytest

from edge.bundle import load_bundle
from edge.errors import EdgeError
from edge.runtime.loop import Voice
from edge.runtime.metrics import graph_agreement
from edge.runtime.sampler import SamplingConfig
from edge.runtime.sessions import OnnxSession, open_sessions
from tests.helpers import edge_cli

GREEDY = SamplingConfig(temperature=0)
TEXT = "The quick brown fox jumps over the lazy dog."
VOICE_GRAPHS = ("lm_prefill", "lm_step", "depth_step", "codec_decoder")


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_qnn = pytest.mark.skipif(not _has("onnxruntime_qnn"), reason="the qnn extra is not installed")
needs_coreml = pytest.mark.skipif(not _has("coremltools"), reason="the coreml extra is not installed")


def _record(root, frames: int = 40) -> tuple[Voice, dict[str, list[dict[str, np.ndarray]]], list]:
    """The CPU (onnx) voice of `root` run greedy for `frames` frames, every graph call's feeds recorded."""
    voice = Voice.load(root, "onnx")
    store = {n: [] for n in voice.sessions}
    voice.hooks.append(lambda graph, feeds, _s: store[graph].append({n: np.array(a) for n, a in feeds.items()}))
    stream = voice.stream(TEXT, sampling=GREEDY, max_seconds=frames / voice.model["frame_rate"])
    list(stream)
    voice.hooks.clear()
    return voice, store, stream.codes


@pytest.fixture(scope="module")
def a16w8(tiny_bundle, tmp_path_factory):
    from edge.quantize import quantize_bundle

    socs = ["SM8650"] if _has("onnxruntime_qnn") else []  # precompiled QNN contexts, loaded when asked for
    return quantize_bundle(tiny_bundle, "npu-a16w8", tmp_path_factory.mktemp("npu") / "a16w8", backends=["onnx"],
                           qnn_socs=socs)


def test_npu_clean_rewrites_keep_every_output(tiny_bundle, tmp_path):
    """The rewrites that make a graph NPU-clean (int64 -> int32, >5-axis boundary tensors folded, integer Mod,
    erf GELU fused, finite attention-mask fills) change no output: the rewritten fp32 graphs run through the
    same session boundary give the original's outputs on the loop's real feeds, integers exactly."""
    from edge.export.onnx import save_onnx
    from edge.quantize.npu import MAX_RANK, finite_masks, fold_rank, fuse_gelu, int64_to_int32, integer_mod

    bundle = load_bundle(tiny_bundle)
    _, store, _ = _record(tiny_bundle, frames=4)
    for name in VOICE_GRAPHS:
        model = onnx.load(str(bundle.graph_file(name, "onnx")))
        assert int64_to_int32(model)
        integer_mod(model)
        fold_rank(model)
        fuse_gelu(model)
        finite_masks(model)
        path = save_onnx(model, tmp_path / f"{name}.onnx")[0]
        # Nothing int64 and nothing of more than five axes at the edge of the rewritten graph.
        for v in [*model.graph.input, *model.graph.output]:
            assert v.type.tensor_type.elem_type != onnx.TensorProto.INT64, (name, v.name)
            assert len(v.type.tensor_type.shape.dim) <= MAX_RANK, (name, v.name)
        spec = bundle.graphs[name]
        ref, new = OnnxSession(str(bundle.graph_file(name, "onnx")), spec), OnnxSession(str(path), spec)
        for feeds in store[name][:4]:
            a, b = ref.run(feeds), new.run(feeds)
            for out, x in a.items():
                assert b[out].dtype == x.dtype and b[out].shape == x.shape, (name, out)
                if x.dtype.kind in "iu":
                    assert np.array_equal(x, b[out]), (name, out)
                else:
                    np.testing.assert_allclose(b[out], x, rtol=1e-4, atol=1e-5, err_msg=f"{name} {out}")


def test_npu_a16w8_bundle(tiny_bundle, a16w8):
    """npu-a16w8 keeps the graph contract, records the boundary and what stays float, and speaks on the CPU."""
    src = load_bundle(tiny_bundle)
    for name, g in a16w8.graphs.items():
        assert g["recipe"] == "npu-a16w8"
        assert {k: g[k] for k in ("inputs", "outputs", "state")} == {k: src.graphs[name][k]
                                                                       for k in ("inputs", "outputs", "state")}
        notes = " | ".join(g["quantization"]["notes"]["onnx"])
        assert "int32 at the graph boundary" in notes and "static QDQ a16w8" in notes, notes
        assert "kept float: nothing" in notes, notes
        model = onnx.load(str(a16w8.graph_file(name, "onnx")), load_external_data=False)
        assert not [v.name for v in [*model.graph.input, *model.graph.output]
                    if v.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    stream = Voice(a16w8, "onnx").stream("Hi there.", sampling=GREEDY, max_seconds=0.4)
    chunks = list(stream)
    assert chunks and all(np.isfinite(c).all() for c in chunks) and stream.stats.frames > 0


@needs_qnn
def test_qnn_runs_every_graph_on_the_htp_and_agrees_with_the_cpu(a16w8):
    """All four graphs load on the HTP with CPU fallback disabled; on the same inputs they agree with the CPU
    run of the same QDQ graphs (measured: top-1 1.0 / 0.97 / 0.99, logits SNR 39 / 45 / 38 dB, codec audio SNR
    50 dB); free-running, the greedy codes agree until csm-tiny's flat logits flip one (measured: frame 3 of 40,
    31% of the 40 frames' codes)."""
    voice, store, codes = _record(a16w8.root)
    htp = open_sessions(a16w8, "qnn", VOICE_GRAPHS)
    for name in VOICE_GRAPHS:
        agreement = graph_agreement(voice.sessions[name], htp[name], store[name])
        # the boundary gives the contract back: same dtypes and shapes as the CPU
        assert agreement["same_contract"], name
        assert agreement["median_snr_db"] >= 25.0, (name, agreement)
        assert agreement.get("top1_agreement", 1.0) >= 0.9, (name, agreement)
    free = Voice(a16w8, "qnn").stream(TEXT, sampling=GREEDY, max_seconds=40 / voice.model["frame_rate"])
    list(free)
    assert len(free.codes) == len(codes) == 40
    assert free.codes[0] == codes[0]


@needs_qnn
def test_speak_backend_qnn_cli(a16w8, tmp_path):
    out = tmp_path / "qnn.wav"
    r = edge_cli("speak", "Hello from the HTP.", "--bundle", str(a16w8.root), "--backend", "qnn", "--out", str(out),
                 "--max-seconds", "0.5", "--temperature", "0")
    assert r.returncode == 0, r.stderr.decode()
    assert b"LIBNATIVE" not in r.stdout  # QNN's own chatter is kept out of stdout (it may carry PCM)
    with wave.open(str(out)) as w:
        assert w.getnframes() > 0


@needs_qnn
def test_qnn_bad_input_is_one_line(tiny_bundle, tmp_path, monkeypatch):
    # An fp32 bundle: one line naming the recipe to quantize with.
    r = edge_cli("speak", "Hi.", "--bundle", str(tiny_bundle), "--backend", "qnn", "--out", str(tmp_path / "x.wav"))
    msg = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in msg and "npu-a16w8" in msg and "Traceback" not in msg, msg
    # A node the HTP refuses: one line naming it.
    from onnx import TensorProto, helper

    from edge.runtime.qnn import QnnSession

    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="the_erf")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    spec = {"inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}], "state": []}
    with pytest.raises(EdgeError, match=r"the HTP refused 1 node\(s\) of graph erf: the_erf \(Erf\)") as e:
        QnnSession(str(path), spec, "npu-a16w8", "erf")
    assert "\n" not in str(e.value)
    # The extra missing: one line naming it.
    import edge.runtime.qnn as sessions

    monkeypatch.setattr(sessions, "_qnn_devices", None)
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)
    with pytest.raises(EdgeError, match=r"pip install 'edge-codec-tts\[qnn\]'"):
        sessions.qnn_devices()


def test_qnn_export_needs_an_npu_recipe(tmp_path):
    r = edge_cli("export", "csm-tiny", "--backend", "qnn", "--out", str(tmp_path / "b"))
    msg = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in msg and "--recipe npu-a16w8" in msg, msg
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def coreml_bundle(tmp_path_factory):
    from edge.export.build import export_bundle

    return export_bundle("csm-tiny", tmp_path_factory.mktemp("coreml") / "csm-tiny", ["coreml"])


@needs_coreml
def test_coreml_export_delegates_each_graph(coreml_bundle):
    """Four .pte files lowered with the Core ML partitioner, each at least 95% delegated (measured: 99.4, 96.9,
    97.1, 100%: the KV cache's rank-6 select/stack at the graph edges stays on ExecuTorch's CPU kernels), with
    the deployment target and compute units in the manifest."""
    bundle = load_bundle(coreml_bundle.root)
    assert bundle.backends() == ["coreml"]
    assert bundle.manifest["coreml"]["minimum_deployment_target"] == {"ios": "17", "macos": "14"}
    assert bundle.manifest["coreml"]["compute_units"] == "CPU_AND_NE"
    assert set(bundle.graphs) == set(VOICE_GRAPHS)
    for name, g in bundle.graphs.items():
        assert g["files"]["coreml"] == [f"{name}.coreml.pte"]
        assert bundle.graph_file(name, "coreml").stat().st_size > 0
        d = g["delegation"]["coreml"]
        assert d["fraction"] >= 0.95 and d["delegated_ops"] > 0 and d["total_ops"] >= d["delegated_ops"], (name, d)


@needs_coreml
@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs here")
def test_coreml_speak_off_apple_is_one_line(coreml_bundle, tmp_path):
    r = edge_cli("speak", "Hi.", "--bundle", str(coreml_bundle.root), "--backend", "coreml",
                 "--out", str(tmp_path / "x.wav"))
    msg = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in msg and "Apple hardware only" in msg, msg


def test_coreml_extra_missing_is_one_line(monkeypatch):
    from edge.export.coreml import _coremltools

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(EdgeError, match=r"pip install 'edge-codec-tts\[coreml\]'"):
        _coremltools()


@needs_qnn
def test_eval_backend_qnn(tiny_bundle, a16w8):
    """`edge eval --backend qnn`: the npu-a16w8 bundle on the HTP against the fp32 bundle on the CPU (measured
    over 40 frames: LM top-1 1.0, depth top-1 0.97, codec SNR 23.4 dB, log-mel 0.17 dB; over 8 frames below)."""
    from edge.quantize import evaluate

    r = evaluate(a16w8.root, tiny_bundle, "qnn", frames=8)
    assert r["backend"] == "qnn" and set(r["recipes"].values()) == {"npu-a16w8"}
    assert r["lm"]["top1_agreement"] >= 0.8, r["lm"]
    assert r["depth"]["top1_agreement"] >= 0.8, r["depth"]
    assert r["codec"]["snr_db"] >= 15.0, r["codec"]
    assert set(r["sizes"]) == set(VOICE_GRAPHS)


def test_profile_refuses_npu_backends_in_one_line(a16w8):
    r = edge_cli("profile", str(a16w8.root), "--backend", "qnn", "--frames", "2")
    msg = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in msg and "edge inspect BUNDLE --qnn" in msg, msg


@needs_qnn
def test_qnn_precompiled_contexts(tiny_bundle, a16w8, monkeypatch, tmp_path):
    """`--qnn-soc SM8650` stores each graph's EPContext model + QNN context binary; with EDGE_QNN_SOC=SM8650 the
    sessions load them instead of preparing the Hexagon graph (measured load, csm-tiny: 0.19-0.39 s -> 0.003-0.012
    s per graph, emulator) and compute what the graph compiled at load does, up to the target's own kernels
    (compiled for v75 instead of the emulator's default, greedy codes agree until frame 12 of 40 here)."""
    for name in VOICE_GRAPHS:
        files = a16w8.graphs[name]["qnn_context"]["SM8650"]
        assert files == [f"qnn/SM8650/{name}_ctx.onnx", f"qnn/SM8650/{name}_ctx_qnn.bin"]
        assert all(a16w8.path(f).stat().st_size > 0 for f in files)
    _, store, _ = _record(a16w8.root, frames=2)
    # One graph compiled at load and the same graph from its context do not run side by side in one process
    # (QNN reports a general execute error): the two are used one after the other, as a device would.
    jit = open_sessions(a16w8, "qnn", ["lm_prefill"])["lm_prefill"]
    x = jit.run(store["lm_prefill"][0])["logits"]
    del jit
    gc.collect()
    monkeypatch.setenv("EDGE_QNN_SOC", "sm8650")
    y = open_sessions(a16w8, "qnn", ["lm_prefill"])["lm_prefill"].run(store["lm_prefill"][0])["logits"]
    gc.collect()
    assert 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / max(float(np.sum((x - y) ** 2)), 1e-30)) >= 25.0
    stream = Voice(a16w8, "qnn").stream("Hi there.", sampling=GREEDY, max_seconds=0.4)
    chunks = list(stream)
    assert chunks and all(np.isfinite(c).all() for c in chunks) and stream.stats.frames > 0
    for soc, message in (("SM9999", "unknown Snapdragon SoC 'SM9999'; known: SM8550, SM8650"),
                         ("SM7550", "has no QNN context for SM7550")):
        monkeypatch.setenv("EDGE_QNN_SOC", soc)
        with pytest.raises(EdgeError, match=message):
            open_sessions(a16w8, "qnn", ["lm_step"])
    monkeypatch.delenv("EDGE_QNN_SOC")
    r = edge_cli("quantize", str(tiny_bundle), "--recipe", "int8", "--out", str(tmp_path / "q"), "--qnn-soc", "SM8650")
    assert r.returncode == 2 and b"npu recipe" in r.stderr, r.stderr
