"""`edge profile` and `edge devices`: every field present, projections monotone, the HTML renders, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edge.api import profile
from edge.devices.catalogue import SCHEMA, get_device, load_catalogue
from edge.devices.roofline import project
from edge.errors import EdgeError
from tests.helpers import edge_cli

GRAPHS = ("lm_prefill", "lm_step", "depth_step", "codec_decoder")
BACKENDS = ("onnx", "executorch")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private edge cache, so the bandwidth/compute anchors are measured (and cached) by these tests."""
    path = tmp_path_factory.mktemp("edge-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_profile(tiny_bundle, cache, tmp_path_factory):
    report = tmp_path_factory.mktemp("report") / "rep"
    return profile(tiny_bundle, backends=list(BACKENDS), frames=4, repeats=3, report=report)


@pytest.fixture(scope="module")
def onnx_only(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with only its ONNX graphs (the manifest edited to match)."""
    out = tmp_path_factory.mktemp("onnx-only") / "tiny-onnx"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        for rel in graph["files"].pop("executorch"):
            del manifest["files"][rel]
            (out / rel).unlink()
    for rel in [r for r in manifest["files"] if r.startswith(manifest["reference"]["dir"])]:
        del manifest["files"][rel]
    shutil.rmtree(out / manifest.pop("reference")["dir"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_profile_has_every_field(tiny_profile):
    p = tiny_profile
    assert p["machine"]["bandwidth"]["read_gbs"] > 0 and p["machine"]["compute"]["gflops"] > 0
    assert "ESTIMATE" in p["estimate"]["label"] and len(p["estimate"]["assumptions"]) >= 4
    assert set(p["devices"]) == set(load_catalogue())
    (b,) = p["bundles"]
    assert set(b["backends"]) == set(BACKENDS)
    for backend, r in b["backends"].items():
        assert set(r["graphs"]) == set(GRAPHS)
        for name, g in r["graphs"].items():
            for key in ("file_bytes", "parameter_bytes", "state_bytes", "weight_bytes_per_call", "bytes_per_call",
                        "flops_per_call", "in_loop_ms_per_call", "roofline_here_ms", "efficiency"):
                assert g[key] > 0 or (key == "state_bytes" and name == "lm_prefill"), (backend, name, key)
            lat = g["latency_ms"]
            assert 0 < lat["min"] <= lat["median"] <= lat["p90"] and lat["calls"] == 3
            ops = g["op_profile"]
            assert ops["source"] == {"onnx": "onnxruntime profiler", "executorch": "executorch etdump"}[backend]
            assert ops["total_ms"] > 0 and ops["top_ops"] and all(o["ms"] >= 0 for o in ops["top_ops"])
            assert any(o["count"] > 0 for o in ops["top_ops"])  # real operators, not only the overhead row
        run = r["run"]
        assert run["frames"] > 0 and run["audio_seconds"] > 0 and run["first_audio_ms"] > 0 and run["rtf"] > 0
        assert set(run["per_frame_ms"]) == {"lm", "depth", "codec", "host"}
        assert r["peak_rss_bytes"] > r["model_bytes"] > sum(g["file_bytes"] for g in r["graphs"].values())
        assert set(r["projections"]) == set(load_catalogue())
        for proj in r["projections"].values():
            assert proj["estimate"] is True and "ESTIMATE" in proj["label"]
            assert set(proj["graph_ms"]) == set(GRAPHS) and all(v > 0 for v in proj["graph_ms"].values())
            assert proj["per_frame_ms"] == pytest.approx(sum(proj["per_frame_split_ms"].values()))
            assert proj["real_time"] == (proj["rtf"] < 1) and proj["fits_in_ram"] in (True, False)
    # ExecuTorch ops come from ETDump, including the ops inside the XNNPACK delegate
    et_ops = [o["op"] for g in b["backends"]["executorch"]["graphs"].values() for o in g["op_profile"]["top_ops"]]
    assert any(":" in op for op in et_ops), et_ops


def _work() -> dict:
    # A memory-bound LM step, a compute-bound codec: both terms of the roofline are exercised.
    return {
        "lm_prefill": {"bytes_per_call": 4e8, "flops_per_call": 5e10, "efficiency": 0.5},
        "lm_step": {"bytes_per_call": 4e8, "flops_per_call": 8e8, "efficiency": 0.4},
        "depth_step": {"bytes_per_call": 6e7, "flops_per_call": 1e8, "efficiency": 0.3},
        "codec_decoder": {"bytes_per_call": 2e8, "flops_per_call": 4e10, "efficiency": 0.6},
    }


MODEL = {"num_codebooks": 32, "frames_per_call": 1, "frame_rate": 12.5}


def test_projections_monotone_in_bandwidth():
    base = get_device("raspberry-pi-5")
    runs = [project(_work(), MODEL, 10**9, dataclasses.replace(base, bandwidth_gbs=bw), "onnx")
            for bw in (5, 10, 17.1, 40, 100, 400)]
    for slower, faster in zip(runs, runs[1:], strict=False):
        for g in GRAPHS:
            assert faster["graph_ms"][g] <= slower["graph_ms"][g]
        assert faster["per_frame_ms"] <= slower["per_frame_ms"] and faster["rtf"] <= slower["rtf"]
    assert runs[-1]["graph_ms"]["lm_step"] < runs[0]["graph_ms"]["lm_step"]  # memory-bound: strictly faster
    assert runs[-1]["graph_ms"]["codec_decoder"] == pytest.approx(runs[-2]["graph_ms"]["codec_decoder"])  # compute


def test_projection_memory_fit():
    pi = get_device("raspberry-pi-5")  # 8 GB
    assert project(_work(), MODEL, 2 * 10**9, pi, "onnx")["fits_in_ram"]
    assert not project(_work(), MODEL, 6 * 10**9, pi, "onnx")["fits_in_ram"]


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("EDGE_REQUIRE_CHROMIUM") == "1":
        pytest.fail("chromium is not installed but EDGE_REQUIRE_CHROMIUM=1 (apt-get install chromium)")
    return found


def test_html_report_renders_in_chromium(tiny_profile):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium); set EDGE_REQUIRE_CHROMIUM=1 to fail instead")
    page = Path(tiny_profile["report"])
    assert sorted(p.name for p in page.parent.iterdir()) == ["index.html", "profile.json"]
    text = page.read_text()
    # self-contained: the only URL is the SVG namespace, nothing is loaded from anywhere
    assert set(re.findall(r"https?://[^'\"\s<]+", text)) == {"http://www.w3.org/2000/svg"}
    assert "<link" not in text and " src=" not in text
    with tempfile.TemporaryDirectory() as profile_dir:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120).stdout
    assert 'data-rendered="yes"' in dom  # the script ran to its end
    devices, backends = len(load_catalogue()), len(BACKENDS)
    counts = {chart: dom.count(f'class="bar" data-chart="{chart}"') for chart in ("latency", "split", "size")}
    assert counts == {
        "latency": backends * len(GRAPHS) * (1 + devices),  # per graph: this machine + every device
        "split": backends * (4 + 3 * devices),  # lm/depth/codec/host measured, lm/depth/codec per device
        "size": backends * len(GRAPHS),  # one segment per graph file per bundle/backend
    }


def test_unknown_device_is_one_clear_error(tiny_bundle):
    with pytest.raises(EdgeError, match="unknown device 'pixel-99'.*raspberry-pi-5"):
        profile(tiny_bundle, devices=["pixel-99"])
    r = edge_cli("profile", str(tiny_bundle), "--device", "pixel-99")
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err
    assert all(name in err for name in load_catalogue())


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/bundle"], "does not exist"),
    (["{bundle}", "--frames", "0"], "--frames must be a positive"),
    (["{bundle}", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["{onnx_only}", "--backend", "executorch"], "has no 'executorch' graphs"),
    (["{bundle}", "--report", "/nonexistent/dir/report"], "does not exist"),
    (["{bundle}", "--report", "{foreign}"], "is not an edge profile report"),
    (["{bundle}", "{bundle}"], "pass --compare"),
])
def test_bad_input_is_one_line_exit_2(args, message, tiny_bundle, onnx_only, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = edge_cli("profile", *[a.format(bundle=tiny_bundle, onnx_only=onnx_only, foreign=foreign) for a in args])
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob(".*partial"))


def test_compare_side_by_side(tiny_bundle, onnx_only, cache):
    # `cache` sets EDGE_CACHE in this process's environment, which the subprocess inherits.
    r = edge_cli("profile", "--compare", str(tiny_bundle), str(onnx_only), "--frames", "3", "--repeats", "2",
                 "--device", "raspberry-pi-5", "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert [b["name"] for b in result["bundles"]] == [tiny_bundle.name, onnx_only.name]
    assert all(set(b["backends"]["onnx"]["projections"]) == {"raspberry-pi-5"} for b in result["bundles"])
    table = edge_cli("profile", "--compare", str(tiny_bundle), str(onnx_only), "--frames", "2", "--repeats", "1",
                     "--device", "raspberry-pi-5")
    assert table.returncode == 0 and b"Bundles side by side" in table.stdout and b"ESTIMATE" in table.stdout


def test_devices_cli_lists_catalogue_with_sources():
    r = edge_cli("devices", "--json")
    assert r.returncode == 0, r.stderr.decode()
    devices = json.loads(r.stdout)
    names = {d["name"] for d in devices}
    assert names == set(load_catalogue()) and len(names) == 7
    for d in devices:
        for fact in ("cpu", "memory_bandwidth_gbs", "ram_gb", "npu", "npu_path", "backends"):
            f = d["facts"][fact]
            sources = f.get("source", [])
            sources = sources if isinstance(sources, list) else [sources]
            sourced = all(s["url"].startswith("http") and s["says"] for s in sources)
            assert f.get("assumed") or (sources and sourced), (d["name"], fact)
        assert d["peak_fp32_gflops"] > 0 and d["memory_bandwidth_gbs"] > 0
    table = edge_cli("devices")
    assert table.returncode == 0 and b"raspberry-pi-5" in table.stdout
    one = edge_cli("devices", "nope")
    assert one.returncode == 2 and b"unknown device 'nope'" in one.stderr


def test_devices_name_says_which_bundle_to_build():
    """Each device's NPU path picks the bundle: qnn with its SoC's precompiled context, coreml for the Neural
    Engine, the CPU's int8 onnx bundle where edge has no NPU path; every advised command parses as the CLI's."""
    import shlex

    import click
    import typer

    from edge.cli import app

    cli = typer.main.get_command(app)
    expected = {"android-flagship-sd8g3": ("qnn", "--qnn-soc SM8650"), "android-mid-sd7g3": ("qnn", "--qnn-soc SM7550"),
                "iphone-15-pro": ("coreml", "--backend coreml"), "macbook-air-m3": ("coreml", "--backend coreml"),
                "raspberry-pi-5": ("onnx", "--recipe lm=int8"), "npu-laptop-258v": ("onnx", "--recipe lm=int8"),
                "x86-laptop-i7-1255u": ("onnx", "--recipe lm=int8")}
    for name, (backend, flag) in expected.items():
        r = edge_cli("devices", name, "--json")
        assert r.returncode == 0, r.stderr.decode()
        build = json.loads(r.stdout)["build"]
        assert build["backend"] == backend and any(flag in c for c in build["commands"]), (name, build)
        assert build["commands"][-1].endswith(f"--backend {backend}")
        for command in build["commands"]:
            words = [w for w in shlex.split(command) if not w.startswith("EDGE_QNN_SOC=")]
            assert words[0] == "edge"
            sub = cli.get_command(click.Context(cli), words[1])
            sub.make_context(words[1], words[2:])  # raises on an unknown option or a missing argument
    text = edge_cli("devices", "android-flagship-sd8g3")
    assert text.returncode == 0 and b"--qnn-soc SM8650 --out edge-voice-sm8650" in text.stdout


def test_catalogue_refuses_a_fact_without_source():
    import jsonschema

    data = json.loads(json.dumps(get_device("raspberry-pi-5").facts))
    del data["ram_gb"]["source"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)
    data = json.loads(json.dumps(get_device("android-flagship-sd8g3").facts))
    data["npu_path"]["value"]["soc"] = "SM0000"  # an SoC QNN has no context target for
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, SCHEMA)


def test_machine_anchors_are_measured_once_and_cached(cache):
    from edge.devices.bandwidth import machine_bandwidth
    from edge.devices.compute import machine_compute

    bw, compute = machine_bandwidth(1), machine_compute(1)
    assert bw.read_gbs > 0 and bw.copy_gbs > 0 and bw.threads == 1 and compute.gflops > 0
    assert machine_bandwidth(1) == bw and machine_compute(1) == compute  # cached: same measurement back
    cached = json.loads((cache / "bandwidth.json").read_text())
    assert any(k.endswith("|threads=1") for k in cached)
