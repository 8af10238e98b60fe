"""Range-checked argparse types for the voice recipes' numeric flags.

A flag out of range (``--batch 0``, ``--audio-dropout 1.5``) stops the recipe before it loads anything, with
argparse's one-line ``error: argument --batch: ...`` and exit status 2, instead of a traceback minutes later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer(low: int) -> Callable[[str], int]:
    """An int of at least `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: give at least {low}")
        return value
    return parse


def real(low: float, high: float | None = None, above: bool = False) -> Callable[[str], float]:
    """A float in [low, high) (or (low, high) with `above`); no upper bound when `high` is None."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value < low or (above and value == low) or (high is not None and value >= high):
            span = f"{'above' if above else 'at least'} {low:g}" + (f" and below {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {span}")
        return value
    return parse


COUNT = integer(1)  # sizes, steps, threads, intervals
NON_NEGATIVE = integer(0)
POSITIVE = real(0.0, above=True)  # learning rates, minutes
WEIGHT = real(0.0)  # loss weights, temperatures
FRACTION = real(0.0, 1.0)  # dropout rates
