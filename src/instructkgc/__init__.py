"""Model side of InstructKGC: arguments, prompt templates, model loading, training, inference engines."""

__version__ = "0.1.0"
