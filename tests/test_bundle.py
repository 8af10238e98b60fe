"""The bundle format: validation on load, atomic writes, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil

import pytest

from edge.bundle import FORMAT_VERSION, BundleWriter, load_bundle
from edge.errors import EdgeError
from tests.helpers import edge_cli, write_small_bundle


@pytest.fixture
def bundle(tmp_path):
    return write_small_bundle(tmp_path / "b")


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_valid_bundle_loads(bundle):
    b = load_bundle(bundle)
    assert b.backends() == ["onnx"]
    assert b.manifest["format_version"] == FORMAT_VERSION
    assert b.file_bytes("g", "onnx") == (bundle / "g.onnx").stat().st_size + 200


def test_missing_file(bundle):
    (bundle / "g.onnx.data").unlink()
    with pytest.raises(EdgeError, match="'g.onnx.data' is missing"):
        load_bundle(bundle)


def test_flipped_byte(bundle):
    data = bytearray((bundle / "g.onnx.data").read_bytes())
    data[17] ^= 0x01
    (bundle / "g.onnx.data").write_bytes(bytes(data))
    with pytest.raises(EdgeError, match="does not match its sha256"):
        load_bundle(bundle)


def test_unknown_format_version(bundle):
    _edit_manifest(bundle, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(EdgeError, match=f"format_version {FORMAT_VERSION + 1} is not supported"):
        load_bundle(bundle)


@pytest.mark.parametrize("rel", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_path_escaping_bundle(bundle, rel):
    (bundle.parent / "outside.bin").write_bytes(b"x")

    def escape(m):
        m["files"][rel] = {"sha256": "0" * 64, "bytes": 1}
        m["graphs"]["g"]["files"]["onnx"].append(rel)

    _edit_manifest(bundle, escape)
    with pytest.raises(EdgeError, match="escapes the bundle|is absolute"):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(EdgeError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(EdgeError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EdgeError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_schema_violation(bundle):
    _edit_manifest(bundle, lambda m: m["graphs"]["g"].pop("recipe"))
    with pytest.raises(EdgeError, match="invalid at graphs/g"):
        load_bundle(bundle)


@pytest.mark.parametrize("sampling", [{"temperature": -1}, {"top_p": 0}, {"beam": 4}])
def test_recommended_sampling_is_checked(bundle, sampling):
    _edit_manifest(bundle, lambda m: m.update(sampling=sampling))
    with pytest.raises(EdgeError, match="invalid at sampling"):
        load_bundle(bundle)


@pytest.mark.parametrize("write", [{"axis": 1, "index": "y"}, {"axis": 1, "index": "nope"}, {"axis": 3, "index": "i"}])
def test_written_state_must_point_at_an_int64_output(bundle, write):
    def edit(m):
        g = m["graphs"]["g"]
        g["outputs"].append({"name": "i", "shape": [1], "dtype": "int64"})
        g["state"][0]["write"] = write
    _edit_manifest(bundle, edit)
    with pytest.raises(EdgeError, match="state 's' of graph 'g' is written at an axis or index"):
        load_bundle(bundle)


def test_every_graph_carries_the_same_backends(bundle):
    def edit(m):
        m["graphs"]["h"] = {**m["graphs"]["g"], "files": {}}  # a graph the onnx backend could not open
    _edit_manifest(bundle, edit)
    with pytest.raises(EdgeError, match="graph h has files for no backend but the bundle has onnx"):
        load_bundle(bundle)


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "half"
    with pytest.raises(RuntimeError), BundleWriter(out) as w:
        w.path("a.onnx").write_bytes(b"partial")
        raise RuntimeError("export broke")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_without_force(bundle):
    with pytest.raises(EdgeError, match="already exists"):
        BundleWriter(bundle)


def test_cli_inspect(bundle):
    ok = edge_cli("inspect", str(bundle), "--json")
    assert ok.returncode == 0, ok.stderr.decode()
    summary = json.loads(ok.stdout)
    assert summary["graphs"]["g"]["bytes"] == {"onnx": (bundle / "g.onnx").stat().st_size + 200}
    assert summary["graphs"]["g"]["state"][0]["name"] == "s"

    (bundle / "g.onnx").write_bytes(b"tampered")
    bad = edge_cli("inspect", str(bundle))
    err = bad.stderr.decode()
    assert bad.returncode == 2
    assert "sha256" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_inspect_missing_path(tmp_path):
    r = edge_cli("inspect", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.decode().strip().startswith("error:")
    assert "Traceback" not in r.stderr.decode()


def test_copy_is_still_valid(bundle, tmp_path):
    shutil.copytree(bundle, tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").backends() == ["onnx"]


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "--bogus"], "No such option: --bogus"),
    (["speak"], "no text to speak; give TEXT, '-' for standard input, or --file PATH"),
])
def test_cli_usage_errors(args, message):
    """Usage errors are the CLI's usual usage line + error and exit 2, not an internal error."""
    r = edge_cli(*args)
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "internal error" not in err and "Traceback" not in err, err
    v = edge_cli("--version")
    assert v.returncode == 0 and v.stdout.decode().startswith("edge ")


def test_cli_os_errors_are_one_line(monkeypatch, capsys):
    """A full disk (or a missing permission) is the machine's doing: one line naming it and the file, exit 2."""
    import errno

    import edge.cli as cli

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/lm_step.onnx.data")

    monkeypatch.setattr(cli, "app", disk_full)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "No space left on device (/out/lm_step.onnx.data); free some disk space" in err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err
