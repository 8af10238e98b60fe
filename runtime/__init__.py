"""The runtime: sessions, the streaming loop, and what feeds it. Importing it registers the qnn backend
(`edge.runtime.qnn`, whose onnxruntime-qnn plugin loads only when a qnn session opens)."""

from edge.runtime import qnn as _qnn  # noqa: F401
