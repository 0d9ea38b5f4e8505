"""``--no_repeat_ngram_size`` for the vLLM engine: transformers' rule as a vLLM logits processor.

vLLM loads :class:`NoRepeatNGram` by name in its workers (``LLM(logits_processors=[...])``); a prompt asks for
it with ``SamplingParams(extra_args={"no_repeat_ngram_size": n})``. :func:`banned_tokens` is the rule itself
(no vLLM needed): as transformers' ``NoRepeatNGramLogitsProcessor``, over prompt and answer together, a token
is banned when it would repeat an n-gram already there.
"""
from __future__ import annotations

from typing import Sequence

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

KEY = "no_repeat_ngram_size"


def banned_tokens(ids: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in ``ids``."""
    if n <= 0 or len(ids) + 1 < n:
        return set()
    if n == 1:
        return set(ids)
    prefix = tuple(ids[len(ids) - n + 1:])
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix}


class NoRepeatNGram(AdapterLogitsProcessor):
    """Per-request wrapper of :func:`banned_tokens` (vLLM's ``AdapterLogitsProcessor``)."""

    @classmethod
    def validate_params(cls, params):
        n = (params.extra_args or {}).get(KEY)
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"{KEY} must be a non-negative integer, got {n!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        n = (params.extra_args or {}).get(KEY) or 0
        if n <= 0:
            return None

        def ban(prompt_ids, output_ids, logits):
            banned = banned_tokens(list(prompt_ids) + list(output_ids), n)
            if banned:
                logits[sorted(banned)] = float("-inf")
            return logits

        return ban
