"""The bundle: a directory with `manifest.json`, one file per graph and backend, tokenizer files.

It is the contract between export and the runtime: both import the manifest's names from here (a graph's
inputs, outputs and state, `io_names`, `state_output`), and neither imports the other for them.

Loading checks everything a device would trip over later: the schema, the format version,
that every file named stays inside the bundle, exists, and has the sha256 the manifest
records. Writing is atomic: files go to a temporary sibling directory that is renamed into
place only when the manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from edge import __version__
from edge.errors import EdgeError
from edge.outputs import check_dir_out, commit_dir, staging

log = logging.getLogger(__name__)

# 2: KV caches are written states (a step returns its new slots, the runtime writes them; `edge.runtime.state`).
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
# The recipes whose graphs are laid out for an NPU (static QDQ, NPU-clean edges): what the qnn backend runs.
NPU_RECIPES = ("npu-int8", "npu-a16w8")
BACKENDS = ("onnx", "qnn", "executorch", "coreml", "torch")
# Backends that run another backend's files: qnn runs the onnx graphs (an npu recipe's) on the QNN EP.
FILES_OF = {"qnn": "onnx"}


def state_output(spec: dict[str, Any]) -> str:
    """Name of the output that carries state `spec` out of a call: ``<name>_new`` if written (only the entries
    the call adds), else ``<name>_next`` (its whole new value). See `edge.runtime.state`."""
    return f"{spec['name']}_new" if spec.get("write") else f"{spec['name']}_next"


def io_names(graph: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A graph's call signature by name: its inputs then its state; its outputs then each state's `state_output`."""
    inputs = [t["name"] for t in graph["inputs"]] + [t["name"] for t in graph["state"]]
    outputs = [t["name"] for t in graph["outputs"]] + [state_output(t) for t in graph["state"]]
    return inputs, outputs


def _schema() -> dict[str, Any]:
    return json.loads(resources.files("edge").joinpath("manifest.schema.json").read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing anything that leaves the bundle."""
    if os.path.isabs(rel):
        raise EdgeError(f"bundle file path '{rel}' is absolute; a bundle may only name files inside itself")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise EdgeError(f"bundle file path '{rel}' escapes the bundle directory; refusing to load it")
    return path


@dataclass
class Bundle:
    """A validated bundle on disk."""

    root: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def backends(self) -> list[str]:
        """The backends whose files the bundle carries (and torch if it has the reference); qnn runs the onnx
        files of an npu recipe (see `require_backend`)."""
        found = {b for g in self.graphs.values() for b in g["files"]}
        if "reference" in self.manifest:
            found.add("torch")
        return [b for b in BACKENDS if b in found]

    def require_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise EdgeError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
        files = FILES_OF.get(backend, backend)
        if files not in self.backends():
            how = f"--backend {files}" + (" and quantize it with --recipe npu-a16w8" if files != backend else "")
            raise EdgeError(
                f"bundle {self.root} has no '{files}' graphs (it was built for: "
                f"{', '.join(self.backends())}); re-export it with {how} or pick one of those"
            )

    def graph_file(self, graph: str, backend: str) -> Path:
        """Path of the main file of `graph` for `backend` (the first one listed)."""
        return self.root / self.graphs[graph]["files"][FILES_OF.get(backend, backend)][0]

    def path(self, rel: str) -> Path:
        return _inside(self.root, rel)

    def file_bytes(self, graph: str, backend: str) -> int:
        files = self.graphs[graph]["files"][FILES_OF.get(backend, backend)]
        return sum(self.manifest["files"][f]["bytes"] for f in files)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory; raise EdgeError with one clear line if anything is off."""
    root = Path(path)
    if not root.exists():
        raise EdgeError(f"bundle '{root}' does not exist; give the directory `edge export` wrote")
    if not root.is_dir():
        raise EdgeError(f"bundle '{root}' is not a directory; give the directory `edge export` wrote")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise EdgeError(f"'{root}' has no {MANIFEST}; it is not an edge bundle (make one with `edge export`)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, re-export it") from None
    except RecursionError:
        raise EdgeError(f"{mpath} is nested too deeply to be a manifest; the bundle is corrupt, re-export it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format_version"), int):
        raise EdgeError(f"{mpath} has no integer format_version; the bundle is corrupt, re-export it")
    version = manifest["format_version"]
    if version != FORMAT_VERSION:
        raise EdgeError(
            f"bundle format_version {version} is not supported by edge {__version__} "
            f"(it reads version {FORMAT_VERSION}); re-export the bundle with this edge"
        )
    try:
        jsonschema.validate(manifest, _schema())
    except RecursionError:
        raise EdgeError(f"{mpath} is nested too deeply to be a manifest; the bundle is corrupt, re-export it") from None
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        message = e.message if len(e.message) <= 200 else e.message[:200] + "..."
        raise EdgeError(f"{mpath} is invalid at {where}: {message}; re-export the bundle") from None

    for name, g in manifest["graphs"].items():
        _check_writes(mpath, name, g)
    carried = {b for g in manifest["graphs"].values() for b in g["files"]}
    for name, g in manifest["graphs"].items():
        if set(g["files"]) != carried:  # a backend runs every graph of a bundle or none
            raise EdgeError(f"{mpath}: graph {name} has files for {', '.join(sorted(g['files'])) or 'no backend'} but "
                            f"the bundle has {', '.join(sorted(carried))}; the manifest was edited or is corrupt, "
                            "re-export the bundle")
    listed = manifest["files"]
    named = [f for g in manifest["graphs"].values() for files in g["files"].values() for f in files]
    if "file" in manifest["tokenizer"]:
        named.append(manifest["tokenizer"]["file"])
    for rel in named:
        if rel not in listed:
            raise EdgeError(f"{mpath} names '{rel}' but records no sha256 for it; the bundle is corrupt")
    for rel, meta in listed.items():
        fpath = _inside(root, rel)
        if not fpath.is_file():
            raise EdgeError(f"bundle file '{rel}' is missing from {root}; re-export the bundle")
        if verify and (fpath.stat().st_size != meta["bytes"] or sha256_file(fpath) != meta["sha256"]):
            raise EdgeError(
                f"bundle file '{rel}' does not match its sha256 in the manifest (tampered or corrupt); "
                "re-export the bundle"
            )
    if "reference" in manifest:
        _inside(root, manifest["reference"]["dir"])
    return Bundle(root.resolve(), manifest)


def _check_writes(mpath: Path, name: str, graph: dict) -> None:
    """A written state's axis must exist and its index must be one of the graph's int64 outputs."""
    outputs = {t["name"]: t for t in graph["outputs"]}
    for t in graph["state"]:
        write = t.get("write")
        if write is None:
            continue
        index = outputs.get(write["index"])
        if write["axis"] >= len(t["shape"]) or index is None or index["dtype"] != "int64":
            raise EdgeError(f"{mpath}: state '{t['name']}' of graph '{name}' is written at an axis or index the "
                            "graph does not have; the bundle is corrupt, re-export it")


class BundleWriter:
    """Build a bundle in a temporary sibling directory; `commit()` renames it into place.

    Used as a context manager: if the body raises (an interrupt included), the temporary directory is
    removed and nothing is left at the destination. Where it may write is `edge.outputs`' policy: `overwrite`
    (``--force``) replaces only a bundle or an empty directory, and never a directory that holds or is
    inside one of `protect` (the input bundle, a checkpoint).
    """

    def __init__(self, out: str | Path, overwrite: bool = False, protect: Sequence[Path] = ()):
        self.out = check_dir_out(Path(out), overwrite, protect=protect)
        self.tmp = staging(self.out, directory=True).resolve()
        self.overwrite = overwrite

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, manifest: dict[str, Any]) -> Bundle:
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.tmp).as_posix()
                files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {
            "format_version": FORMAT_VERSION,
            "edge_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **manifest,
            "files": files,
        }
        jsonschema.validate(manifest, _schema())
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        commit_dir(self.tmp, self.out)
        log.info("wrote bundle %s (%d files)", self.out, len(files))
        return Bundle(self.out, manifest)
