"""Session-wide fixtures: the csm-tiny bundle is exported once (all backends) and shared."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    from edge.export.build import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "csm-tiny"
    return export_bundle("csm-tiny", out, ["onnx", "executorch", "torch"]).root
