"""Model families. Each is one module here exposing the same four functions:

- ``build_reference(config: dict, seed: int) -> nn.Module``: a reference model from a preset config,
- ``load_reference(directory: Path) -> nn.Module``: a reference model from a local checkpoint,
- ``graphs(model, options: dict) -> tuple[list[Graph], dict]``: the exportable graphs and the
  manifest's ``model`` section,
- ``tokenizer(model, checkpoint: Path | None, writer) -> dict``: the manifest's ``tokenizer`` section
  (copying tokenizer files into the bundle being written).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edge.errors import EdgeError

FAMILIES = ("csm", "mimi")


def get_family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise EdgeError(f"unknown model family '{name}'; known families: {', '.join(FAMILIES)}")
    return importlib.import_module(f"edge.export.families.{name}")
