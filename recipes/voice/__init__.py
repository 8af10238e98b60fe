"""Recipe for edge's built-in voice: data (`data.py`), codec (`train_codec.py`), LM (`train_lm.py`).

Run from the repository root as modules, e.g. ``python -m recipes.voice.data --out data/voice``.
These scripts are not part of the `edge` package; they need the ``train`` extra.
"""
