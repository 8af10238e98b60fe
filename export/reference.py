"""The torch backend: the family adapter's own graph modules, rebuilt from a bundle's `reference/` weights and run
eagerly by PyTorch. It is the reference the other backends are checked against (`edge speak --backend torch`),
and ExecuTorch quantization starts from its modules.

The runtime opens sessions by backend name without importing export: importing `edge.export` registers this
backend with it (`edge.runtime.sessions.register_backend`). Nothing here imports torch until a session opens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.bundle import Bundle, io_names
from edge.errors import EdgeError
from edge.export.families import get_family
from edge.runtime.sessions import default_threads, register_backend


def reference_graphs(bundle: Bundle) -> dict[str, Any]:
    """The graphs of a bundle rebuilt from its `reference/` weights (torch backend, ExecuTorch quantization)."""
    family = get_family(bundle.family)
    model = family.load_reference(bundle.path(bundle.manifest["reference"]["dir"]))
    graphs, _ = family.graphs(model, bundle.manifest["export_options"])
    return {g.name: g for g in graphs}


class TorchSession:
    """The eager reference: the family adapter's graph module run by PyTorch itself."""

    def __init__(self, module, spec: dict, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._module = module
        self.input_names, self.output_names = io_names(spec)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with self._torch.inference_mode():
            outs = self._module(*args)
        return {n: o.numpy() for n, o in zip(self.output_names, outs, strict=True)}


def open_torch_sessions(bundle: Bundle, names: list[str], threads: int | None) -> dict[str, TorchSession]:
    """One eager session per named graph (all cores unless `threads` is given)."""
    try:
        graphs = reference_graphs(bundle)
    except ImportError as e:
        raise EdgeError(f"the torch backend needs the export extra ({e.name} missing): "
                        "pip install 'edge-codec-tts[export]'") from None
    return {n: TorchSession(graphs[n].module, bundle.graphs[n], threads or default_threads()) for n in names}


register_backend("torch", open_torch_sessions)
