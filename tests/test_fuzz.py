"""Fuzzed input through the real CLI: manifests with mutated fields, types and nesting, and flag values of every
kind. Whatever comes in, edge answers with success or one line and exit 2, never a traceback or exit 1, and a
failed run writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_safety import one_line, run_cli

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def fuzz_bundle(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "voice"
    shutil.copytree(tiny_bundle, root)
    return root, json.loads((root / "manifest.json").read_text())


def _paths(node, prefix=()):
    """Every path into a JSON document (dict keys and list indices)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


@SETTINGS
@given(data=st.data())
def test_mutated_manifests(fuzz_bundle, tmp_path, data):
    root, manifest = fuzz_bundle
    paths = [p for p in _paths(manifest) if p and p[0] != "files"]  # files: covered by the sha256 tests
    path = data.draw(st.sampled_from(paths), label="path")
    action = data.draw(st.sampled_from(["replace", "delete", "nest"]), label="action")
    m = json.loads(json.dumps(manifest))
    node = m
    for key in path[:-1]:
        node = node[key]
    if action == "delete":
        del node[path[-1]]
    elif action == "nest":
        node[path[-1]] = json.loads("[" * 500 + "]" * 500)
    else:
        node[path[-1]] = data.draw(json_values, label="value")
    (root / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "x.wav"
    try:
        inspected, err, _ = run_cli("inspect", str(root))
        assert inspected in (0, 2) and (inspected == 0 or one_line(err)), err
        code, err, _ = run_cli("speak", "Hi.", "-b", str(root), "--out", str(out), "--temperature", "0",
                               "--max-seconds", "0.24")
        assert code in (0, 2), err
        if code == 2:
            assert one_line(err) and not out.exists(), err
            # inspect fails wherever speak would, except for what only the text or the flags decide
            assert inspected == 2 or "text is" in err or "speaker" in err or "seconds" in err, err
    finally:
        (root / "manifest.json").write_text(json.dumps(manifest))
        out.unlink(missing_ok=True)


FLAGS = ["--threads", "--max-seconds", "--temperature", "--top-k", "--top-p", "--seed", "--speaker", "--backend"]
flag_values = (st.integers(-(2**66), 2**66).map(str) | st.floats().map(repr) | st.text(max_size=8)
               | st.sampled_from(["0", "1", "-1", "nan", "inf", "-inf", "1e308", "1e-320", "2.5", "onnx", "torch",
                                  "", " ", "0x10"]))


@SETTINGS
@given(flags=st.dictionaries(st.sampled_from(FLAGS), flag_values, min_size=1, max_size=3))
def test_fuzzed_flag_values(tiny_bundle, tmp_path, flags):
    out = tmp_path / "x.wav"
    args = [a for flag, value in flags.items() for a in (flag, value)]
    if "--max-seconds" not in flags:
        args += ["--max-seconds", "0.24"]
    try:
        code, err, _ = run_cli("speak", "Hi.", "-b", str(tiny_bundle), "--out", str(out), *args)
        assert code in (0, 2), err
        if code == 2:
            assert one_line(err) and not out.exists(), err
        else:
            assert out.read_bytes()[:4] == b"RIFF"
        assert [p.name for p in tmp_path.iterdir()] in ([], ["x.wav"])  # never a temporary left behind
    finally:
        out.unlink(missing_ok=True)
