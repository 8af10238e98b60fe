"""Loading a reference model from a local Hugging Face checkpoint directory, safely."""

from __future__ import annotations

import json
from pathlib import Path

from edge.errors import EdgeError


def load_pretrained(cls, directory: Path, architecture: str):
    """Load `cls` from `directory`, refusing anything but a safetensors checkpoint of `architecture`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgeError(f"checkpoint directory '{directory}' does not exist; give a local Hugging Face model dir")
    config = directory / "config.json"
    if not config.is_file():
        raise EdgeError(f"checkpoint '{directory}' has no config.json; give a Hugging Face model directory")
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except json.JSONDecodeError as e:
        raise EdgeError(f"{config} is not valid JSON ({e.msg}); the checkpoint is corrupt") from None
    if archs and architecture not in archs:
        raise EdgeError(f"checkpoint '{directory}' is a {', '.join(archs)}, not a {architecture}; "
                        "pick a checkpoint of this family or another preset")
    if not list(directory.glob("*.safetensors")):
        pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
        hint = f" (found pickle-only weights: {', '.join(pickles)}; convert them to safetensors)" if pickles else ""
        raise EdgeError(f"checkpoint '{directory}' has no .safetensors weights{hint}")
    try:
        return cls.from_pretrained(directory, use_safetensors=True).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeError(f"cannot load checkpoint '{directory}': {first}") from None


def recommended_sampling(directory: Path | None) -> dict[str, float | int]:
    """The sampling a checkpoint recommends, from its ``generation_config.json`` (Hugging Face's place for it):
    greedy (temperature 0) where it says ``do_sample: false``, else the temperature / top_k / top_p it sets.
    Only what the file says explicitly: transformers writes one for every model, and its implicit default
    (greedy) is no recommendation."""
    path = None if directory is None else Path(directory) / "generation_config.json"
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgeError(f"{path} is not valid JSON ({e.msg}); the checkpoint is corrupt") from None
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    if config.get("do_sample") is not True:
        return {}
    return {k: config[k] for k in ("temperature", "top_k", "top_p") if config.get(k) is not None}
