"""The `depth` loop shape (CSM): per frame, sample codebook 0 from the backbone, run the depth transformer
`depth_step` over codebooks 1..K-1, then advance the backbone with `lm_step`.

Prefill: the chunk's tokens, padded to the prompt capacity, through `lm_prefill`, whose KV cache `lm_step`
starts from. Speech ends at the first frame whose codes are the end-of-speech code (on all codebooks, or on
all but the last, as the manifest's `end_of_speech` says); as transformers' CSM, that frame is still audio
unless every one of its codes is the end code.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from edge.bundle import Bundle
from edge.errors import EdgeError
from edge.runtime.sessions import Session
from edge.runtime.state import State


class Frames:
    graphs = ("lm_prefill", "lm_step", "depth_step", "codec_decoder")
    stateful = ("lm_step", "depth_step")
    stats = {"lm_prefill": "prefill", "lm_step": "lm", "depth_step": "depth", "codec_decoder": "codec"}

    def __init__(self, bundle: Bundle):
        self.model = bundle.model

    @staticmethod
    def check(bundle: Bundle) -> None:
        """The model facts the loop sizes its buffers by must match the graphs' shapes (a manifest edited by
        hand that passes the schema would otherwise fail mid-stream)."""
        m, g = bundle.model, bundle.graphs
        tensors = {(name, t["name"]): t["shape"] for name, spec in g.items()
                   for t in spec["inputs"] + spec["outputs"] + spec["state"]}
        expected = {
            ("lm_prefill", "tokens"): [1, m["prompt_capacity"]],
            ("lm_step", "codes"): [1, m["num_codebooks"]],
            ("codec_decoder", "codes"): [1, m["num_codebooks"], m["frames_per_call"]],
            ("codec_decoder", "audio"): [1, 1, m["frames_per_call"] * m["samples_per_frame"]],
        }
        for (name, tensor), shape in expected.items():
            if tensors.get((name, tensor)) != shape:
                raise EdgeError(f"bundle {bundle.root}: {name}'s {tensor} is {tensors.get((name, tensor))}, but the "
                                f"model section implies {shape}; the manifest was edited or is corrupt: re-export "
                                "the bundle")
        kv = next((t for t in g["lm_step"]["state"] if t.get("write")), None)
        capacity = None if kv is None else kv["shape"][kv["write"]["axis"]]
        if capacity != m["kv_capacity"] or m["kv_capacity"] <= m["prompt_capacity"]:
            raise EdgeError(f"bundle {bundle.root}: kv_capacity {m['kv_capacity']} does not match lm_step's cache "
                            "(or does not exceed prompt_capacity); the manifest was edited or is corrupt: re-export "
                            "the bundle")

    def max_frames(self, tokens: list[int], wanted: int) -> int:
        return min(wanted, self.model["kv_capacity"] - len(tokens))

    def run(self, tokens: list[int], sample: Callable[[np.ndarray], int], max_frames: int,
            s: dict[str, Session], states: dict[str, State],
            generated: list) -> Generator[list[int], None, str]:
        """Yield the chunk's audible frames; return "eos" if speech ended by itself, else "" (out of frames)."""
        m = self.model
        k = m["num_codebooks"]
        padded = np.full((1, m["prompt_capacity"]), m["text_pad_token"], dtype=np.int64)  # this chunk's own
        padded[0, : len(tokens)] = tokens
        depth, kv = states["depth_step"], states["lm_step"]
        out = s["lm_prefill"].run({"tokens": padded, "length": np.array([len(tokens)], np.int64)})
        kv.reset({"kv": out["kv"]})  # lm_step starts from the cache lm_prefill filled
        eos = m["end_of_speech"]["eos_token"]
        eos_span = k - 1 if m["end_of_speech"]["eos_rule"] == "all_but_last_codebook" else k

        for frame in range(max_frames):
            hidden = out["hidden"]
            codes = [sample(out["logits"])]
            # Each frame's depth positions start again at 0; slots past a position are masked, so the depth
            # cache needs no clearing between frames.
            for p in range(k):
                d = s["depth_step"].run({
                    "hidden": hidden, "code": np.array([codes[-1]], np.int64),
                    "position": np.array([p], np.int64), **depth.feeds(),
                })
                depth.update(d)
                if p > 0:
                    codes.append(sample(d["logits"]))
            generated.append(codes)
            if all(c == eos for c in codes[:eos_span]):
                if any(c != eos for c in codes):  # the stopping frame is audio unless *all* its codes are eos
                    yield codes
                return "eos"
            yield codes
            if frame + 1 < max_frames:
                out = s["lm_step"].run({
                    "codes": np.array([codes], np.int64), "position": np.array([len(tokens) + frame], np.int64),
                    **kv.feeds(),
                })
                kv.update(out)
        return ""
