"""Where edge keeps what it makes once and reuses: default bundles, machine measurements."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$EDGE_CACHE, else $XDG_CACHE_HOME/edge, else ~/.cache/edge."""
    base = os.environ.get("EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge"
    )
    return Path(base)
