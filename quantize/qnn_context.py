"""Precompiled QNN contexts: an npu graph compiled ahead of time for one Snapdragon SoC (onnxruntime's EPContext
model plus the QNN context binary it points to), so a device loads it without preparing the Hexagon graph.

The SoC ids are QNN's (`QnnTypes.h`, `QNN_SOC_MODEL_*`); the HTP backend compiles for any of them on x86 Linux.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.errors import EdgeError
from edge.runtime.qnn import SOCS, check_soc  # noqa: F401  (the SoCs a context is compiled for)

log = logging.getLogger(__name__)

def compile_context(src: Path, ctx: Path, soc: str) -> list[Path]:
    """Compile the QDQ graph `src` for `soc` into the EPContext model `ctx` (+ its `_qnn.bin` beside it)."""
    import onnxruntime as ort
    import onnxruntime_qnn

    from edge.runtime.qnn import qnn_devices, refusal
    from edge.runtime.sessions import native_output

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    opts.add_session_config_entry("ep.context_enable", "1")
    opts.add_session_config_entry("ep.context_file_path", str(ctx))
    opts.add_session_config_entry("ep.context_embed_mode", "0")  # the binary beside the model, not inside it
    opts.add_provider_for_devices(qnn_devices(), {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                                  "soc_model": str(SOCS[soc]), "offload_graph_io_quantization": "0"})
    ctx.parent.mkdir(parents=True, exist_ok=True)
    with native_output(f"qnn {src.stem} context") as log_text:
        try:
            ort.InferenceSession(str(src), opts)
        except Exception as e:  # onnxruntime's own error types
            raise EdgeError(refusal(src.stem, log_text(), str(e))) from None
    files = sorted(p for p in ctx.parent.iterdir() if p.name.startswith(ctx.stem))
    log.info("qnn context %s for %s: %s", src.stem, soc, ", ".join(p.name for p in files))
    return files
