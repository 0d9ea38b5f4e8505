"""Inference engines (HF batched, vLLM), schema-constrained decoding and the resumable output file."""
from .engine import Engine, Generation, SamplingSettings
from .factory import build_engine

__all__ = ["Engine", "Generation", "SamplingSettings", "build_engine"]
