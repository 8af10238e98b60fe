"""Token sampling in numpy, shared by every backend: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import numpy as np

from edge.errors import EdgeError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.9  # 0 means greedy (argmax)
    top_k: int = 50  # 0 disables
    top_p: float = 1.0  # 1 disables
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> SamplingConfig:
        for name, kind, what in (("temperature", numbers.Real, "a number"), ("top_k", numbers.Integral, "an integer"),
                                 ("top_p", numbers.Real, "a number"), ("seed", numbers.Integral, "an integer")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise EdgeError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise EdgeError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise EdgeError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise EdgeError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.seed < 0:
            raise EdgeError(f"--seed must be >= 0, got {self.seed}")
        return self

    def override(self, **fields: float | None) -> SamplingConfig:
        """This config with the `fields` given (not None) replaced, validated: flags over a voice's
        recommended sampling."""
        return replace(self, **{k: v for k, v in fields.items() if v is not None}).validate()


class Sampler:
    def __init__(self, config: SamplingConfig):
        self.config = config.validate()
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """Pick one token from a 1-D (or (1, V)) row of logits."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        c = self.config
        if c.temperature == 0:
            return int(np.argmax(logits))
        # Shifted before scaling, so the best logit is 0 whatever the temperature: a tiny temperature sends the
        # others to -inf (greedy in the limit), never inf - inf = NaN.
        with np.errstate(over="ignore"):
            logits = (logits - logits.max()) / c.temperature
        if 0 < c.top_k < logits.size:
            kth = np.partition(logits, -c.top_k)[-c.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits)
        probs /= probs.sum()
        if c.top_p < 1:
            order = np.argsort(-probs)
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, c.top_p) + 1)]
            mask = np.zeros_like(probs)
            mask[keep] = 1
            probs = probs * mask
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
