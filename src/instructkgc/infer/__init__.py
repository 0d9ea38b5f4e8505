"""Inference engines (HF batched, vLLM), schema-constrained decoding and the resumable output file."""
from .engine import Engine, Generation, SamplingSettings, create_engine

__all__ = ["Engine", "Generation", "SamplingSettings", "create_engine"]
