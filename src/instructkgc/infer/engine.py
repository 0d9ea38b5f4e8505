"""The small engine interface shared by the HF and vLLM backends.

Both engines are constructed the same way, ``Engine(model, tokenizer, stop_token_ids, settings, batch_size,
constrained)``, from a model that :func:`instructkgc.infer.factory.build_engine` loads for the chosen backend."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

# Called after each finished batch with (records done, new tokens generated).
ProgressCallback = Callable[[int, int], None]


@dataclass
class Generation:
    """One answer: its text, how many new tokens it took, and whether it ended with a stop token
    (``False``: cut off by ``max_new_tokens``)."""

    text: str
    num_tokens: int
    finished: bool


@dataclass
class SamplingSettings:
    """Decoding settings common to the engines (greedy unless ``do_sample``)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_beams: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: Optional[int] = None

    @classmethod
    def from_args(cls, generating_args) -> "SamplingSettings":
        """Take the matching fields of ``GenerationArguments`` (or any object with them)."""
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(generating_args, k) for k in names if hasattr(generating_args, k)})


class Engine(ABC):
    """Generates answers for tokenised prompts, optionally constrained to one JSON Schema per prompt."""

    whole_file = False  # True: give generate() every prompt of the input at once (it schedules them itself)

    @abstractmethod
    def generate(self, prompts: Sequence[list[int]], json_schemas: Optional[Sequence[Optional[dict]]] = None,
                 progress: Optional[ProgressCallback] = None) -> list[Generation]:
        """Answers in the order of ``prompts``."""

    def close(self) -> None:
        """Release the model (no-op by default)."""

