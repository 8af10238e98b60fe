"""The benchmark's own helpers (not its timings): bytes per step, and met/not met read from the figures."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from edge.bundle import load_bundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from report import targets  # noqa: E402
from roofline import step_bytes  # noqa: E402


def test_step_bytes_count_the_rows_a_step_reads(tiny_bundle):
    b = load_bundle(tiny_bundle)
    m, spec = b.model, b.graphs["lm_step"]
    table = m["num_codebooks"] * m["audio_vocab_size"] * spec["outputs"][1]["shape"][-1] * 4
    kv = math.prod(spec["state"][0]["shape"]) * 4
    onnx, et = step_bytes(b, "onnx"), step_bytes(b, "executorch")
    for r, backend in ((onnx, "onnx"), (et, "executorch")):
        assert r["kv_bytes"] == kv
        assert r["bytes_per_step"] == r["weight_bytes"] + kv
        # All of the file but the table rows the step does not read (one row per codebook out of the vocabulary).
        assert r["weight_bytes"] < b.file_bytes("lm_step", backend) - 0.9 * table
    assert et["weight_bytes"] == pytest.approx(onnx["weight_bytes"], rel=0.25)
    assert step_bytes(b, "torch")["weight_bytes"] == onnx["weight_bytes"]


def _results(speedup: float, fp32: float, vs_bound: float, first: float, codec_rtf: float) -> dict:
    """`first`: the first frame's time against a mean frame of 0.02 s (twice that or more means buffering)."""
    edge = {"prefill": 0.01, "frame_work": 0.02, "first_frames": 1}
    return {
        "e2e": {"csm-tiny": {"preset": "csm-tiny", "runners": {
            "eager_generate": {"speedup_vs_eager": 1.0},
            "onnx/fp32": {**edge, "speedup_vs_eager": fp32, "first_audio": 0.01 + first, "first_frame": first},
            "onnx/int8": {**edge, "speedup_vs_eager": speedup, "first_audio": 0.03, "first_frame": 0.02}}}},
        "roofline": {"csm-medium": {"runners": {
            f"onnx/{r}": {"vs_bound": vs_bound, "step_ms": 3.0, "bound_ms": 2.0} for r in ("int8", "int4")}}},
        "codec": {"frame_ms": 80.0, "runners": {"onnx/int8": {"rtf": codec_rtf, "ms_per_frame": 80 * codec_rtf}}},
    }


def test_targets_read_met_and_not_met_from_the_figures():
    assert [ok for _, ok, _ in targets(_results(5.0, 2.5, 1.4, 0.025, 0.05))] == [True, True, True, True]
    assert [ok for _, ok, _ in targets(_results(3.0, 2.5, 1.6, 0.04, 0.2))] == [False, False, False, False]
    assert not targets(_results(5.0, 1.5, 1.0, 0.02, 0.05))[0][1]  # best >= 4x but fp32 under 2x
    two_frames = _results(5.0, 2.5, 1.4, 0.025, 0.05)
    two_frames["e2e"]["csm-tiny"]["runners"]["onnx/int8"]["first_frames"] = 2
    assert not targets(two_frames)[2][1]  # a chunk held back for a second frame is buffering
    assert [ok for _, ok, _ in targets({})] == [None, None, None, None]
