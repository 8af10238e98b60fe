"""edge: neural-codec LM text-to-speech, exported, quantized and run on device."""

__version__ = "0.1.0"
