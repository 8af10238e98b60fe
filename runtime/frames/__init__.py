"""Loop shapes: what one frame of a voice is, declared by the bundle's manifest (`model.loop`).

The runtime's loop (`edge.runtime.loop`) is written once: text chunking, pauses, the codec decoder's
state across chunks, timing. What differs between model families is how one chunk's prompt becomes
frames, and a loop shape is exactly that: a module here named by `model.loop`, holding one class
`Frames` with

- `graphs`: the graphs it calls (the loop opens their sessions), `stateful`: those whose state
  lives across a stream's frames (taken from the voice's pools), `stats`: the `Stats` field each
  graph's call time adds to;
- `check(bundle)`: the manifest facts it relies on, cross-checked against the graphs' shapes;
- `max_frames(tokens, wanted)`: how many frames a chunk may run (a KV cache bounds it);
- `run(tokens, sample, max_frames, sessions, states, generated)`: a generator that prefills the chunk and
  yields each audible frame as the codec decoder's input for it (a list of codes, or a latent vector),
  appends every frame it generated to `generated`, and returns "eos" when speech ended by itself, else ""
  (it ran out of frames).

| loop | frame | families |
| --- | --- | --- |
| `depth` | backbone step, then a depth transformer over the codebooks | csm |
"""

from __future__ import annotations

import importlib
from typing import Any

from edge.bundle import Bundle
from edge.errors import EdgeError

LOOPS = ("depth",)


def frames_for(bundle: Bundle) -> Any:
    """The loop shape a voice bundle declares (its `Frames`, checked against the bundle)."""
    kind = bundle.model.get("loop")
    if kind is None:
        raise EdgeError(f"bundle {bundle.root} is a '{bundle.family}' codec bundle, not a voice; "
                        "export a TTS preset such as csm-tiny to speak")
    if kind not in LOOPS:
        raise EdgeError(f"bundle {bundle.root} declares loop '{kind}', which this edge does not run (it runs "
                        f"{', '.join(LOOPS)}); upgrade edge or re-export the bundle")
    shape = importlib.import_module(f"edge.runtime.frames.{kind}").Frames(bundle)
    shape.check(bundle)
    return shape
