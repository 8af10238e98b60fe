"""Export: family adapters turn a reference model into graphs (`families/`, `graph.py`, `streaming.py`), written as
ONNX and ExecuTorch files into a bundle (`build.py`).

Importing this package also registers the torch reference backend with the runtime (`reference.py`).
"""

from edge.export import reference as _reference  # noqa: F401
