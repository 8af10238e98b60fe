"""A graph's state between calls, held by the runtime (see DESIGN.md, "The graphs").

Every state tensor goes into a graph call as an input and comes back in one of two ways, as its
manifest entry says:

- **carried** (the default): the output ``<name>_next`` is its whole new value. Convolution tails,
  positions: small tensors that change as a whole.
- **written** (the entry has ``"write": {"axis": a, "index": "<output>"}``): the graph returns only the
  entries it adds, ``<name>_new``, and the int64 output ``<index>`` says where they go along axis ``a``.
  The runtime writes them into its own array in place. KV caches are written: a step adds one slot
  per layer, so a graph that returned the whole cache would copy all of it on every call (the
  real-config Mimi decoder: 16 MB per 80 ms frame, 1.6 ms of an int8 profile).

Graphs never write their inputs, and nothing here aliases a graph's memory: a `State` owns its
written arrays, so a backend may keep or reuse its own buffers freely.
"""

from __future__ import annotations

import numpy as np

from edge.bundle import state_output


class State:
    """The state tensors of one graph for one stream: `feeds` goes into a call, `update` takes its outputs.

    Carried tensors start as `zeros` (shared between streams: they are only ever replaced, never written);
    written ones are this object's own arrays, allocated (as zeros) once, so a `State` can be `reset` and
    reused stream after stream without allocating.
    """

    def __init__(self, specs: list[dict], zeros: dict[str, np.ndarray] | None = None):
        self.specs = specs
        self._zeros = zeros if zeros is not None else zero_state(specs)
        self._owned = {s["name"]: _zeros(s) for s in specs if s.get("write")}
        self.arrays = {s["name"]: self._owned.get(s["name"], self._zeros.get(s["name"])) for s in specs}

    def reset(self, start: dict[str, np.ndarray] | None = None) -> None:
        """Back to a starting state: the tensors `start` names from its arrays (another graph's output, e.g.
        `lm_prefill`'s KV cache, copied into a written state), all others zero. Each array is written once."""
        start = start or {}
        for name, a in self._owned.items():
            if name in start:
                np.copyto(a, start[name])
            else:
                a.fill(0)
        self.arrays = {s["name"]: self._owned.get(s["name"], start.get(s["name"], self._zeros.get(s["name"])))
                       for s in self.specs}

    def feeds(self) -> dict[str, np.ndarray]:
        return self.arrays

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        """Advance to the state a call left: replace carried tensors, write the new entries of written ones."""
        for s in self.specs:
            name, write = s["name"], s.get("write")
            if write is None:
                self.arrays[name] = outputs[state_output(s)]
                continue
            where: list[slice | np.ndarray] = [slice(None)] * len(s["shape"])
            where[write["axis"]] = outputs[write["index"]].reshape(-1)
            self.arrays[name][tuple(where)] = outputs[state_output(s)]


def _zeros(spec: dict) -> np.ndarray:
    return np.zeros(spec["shape"], dtype=spec["dtype"])


def zero_state(specs: list[dict]) -> dict[str, np.ndarray]:
    """The carried tensors' zeros of a graph, to share between its `State`s."""
    return {s["name"]: _zeros(s) for s in specs if not s.get("write")}
