"""Schema-constrained decoding with xgrammar for the HF engine.

Every batch row gets its own ``GrammarMatcher`` compiled from the row's JSON Schema (compiled grammars are
cached by the schema's JSON text). Each step the allowed-token bitmask is applied to the logits, so the
answer can only be JSON of the schema's shape, written with ``json.dumps`` spacing (``", "`` / ``": "``).

A grammar alone cannot stop a weak model from writing one string forever until ``max_new_tokens`` cuts it
off (invalid JSON). Near the end of the budget a *closing policy* takes over: on a fork of the matcher it
finds a short text that completes the JSON (:meth:`GrammarCache.closing_text`) and spells it in tokens;
whenever the model's own choice would leave too few tokens for that, the first closing token is forced. With
greedy decoding the answer is therefore complete whenever ``max_new_tokens`` is at least the length of the
shortest valid answer; with sampling the check uses the arg-max token, and a cut answer is still counted by
the engine (``Generation.finished``), never silent.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from ..utils import UsageError
from .grammar import JSON_GRAMMAR_OPTIONS, SPAN_TEXT, answer_grammar

EXTRA = "pip install 'instructkgc[constrained]'"
MAX_NESTING = 6  # closing brackets tried after a quote (EE answers close up to 5 in a row)
_CLOSERS = (b"]", b"}", b"[", b'"', b"{", b"0", b"null")  # tried in this order outside strings
_CONTINUATIONS = tuple(bytes([b]) for b in range(0x80, 0xC0))  # UTF-8 continuation bytes
# last resort inside a string that cannot end here (a span of the input text just opened or in mid-word): any
# printable character the grammar takes, the span's own rule then forcing the rest of its word
_PRINTABLE = tuple(bytes([b]) for b in range(0x21, 0x7F) if b not in b'"\\')


def _accepts(matcher, text: bytes) -> bool:
    """Whether ``matcher`` accepts ``text`` next; its state is left as it was. (xgrammar leaves the state alone
    when it refuses a string and counts an accepted one as one rollback step: cheaper than a fork, which copies
    a parse state that grows with the answer.)"""
    if matcher.accept_string(text):
        matcher.rollback(1)
        return True
    return False


def _after_string(matcher) -> bool:
    """Whether ``matcher`` (just past a quote) is outside a string: the quote closed one, it did not open one
    (the state is not changed).

    Inside a free string any character may follow; after a closing quote only structure may: the end, ``, "``
    (a raw quote is never string content), a key's ``: "`` / ``: [`` / ``: {``, or closing brackets followed by
    structure, as deep as the tasks' answers nest (an argument's list in its event's object in the event list
    in the answer: ``"]}}]}``). (A span of the input text may start with a comma, a colon or a bracket: those
    alone decide nothing.)
    """
    if _accepts(matcher, b"a"):
        return False
    return _structure_follows(matcher, MAX_NESTING)


def _structure_follows(matcher, depth: int) -> bool:
    if matcher.is_completed() or any(_accepts(matcher, s) for s in (b', "', b': "', b': [', b': {')):
        return True
    for bracket in (b"]", b"}"):
        if depth and matcher.accept_string(bracket):
            follows = _structure_follows(matcher, depth - 1)
            matcher.rollback(1)
            if follows:
                return True
    return False


def require_xgrammar():
    """Import xgrammar or raise a one-line UsageError naming the extra."""
    try:
        import xgrammar
    except ImportError:
        raise UsageError(f"--constrained_decoding needs xgrammar: {EXTRA}") from None
    return xgrammar


def schema_ebnf(schema: dict) -> str:
    """The answer grammar of ``schema`` as EBNF text: what the vLLM engine sends
    (``StructuredOutputsParams(grammar=...)``); the HF engine compiles the same grammar (:class:`GrammarCache`).
    A schema carrying the record's text (grounded decoding) gives the span-grounded grammar."""
    require_xgrammar()
    return answer_grammar(schema)


class GrammarCache:
    """Tokenizer info, a grammar compiler and compiled grammars (cached by schema) for one model."""

    MAX_GRAMMARS = 512  # grounded grammars are per record: keep the cache bounded
    MAX_TEXTS = 4096  # remembered spellings of closing and forced texts (each dict)

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int]):
        xgr = require_xgrammar()
        self.xgr = xgr
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=self.stop_token_ids)
        self.compiler = xgr.GrammarCompiler(self.info)
        self._grammars: dict[str, object] = {}
        self._longest: dict[bytes, Optional[list[int]]] = {}  # text -> its longest matches (see ``spell``)
        self._encoded: dict[str, Optional[list[int]]] = {}  # text -> the tokenizer's encoding (None: not spelling it)
        special = set(self.info.special_token_ids)
        # decoded_vocab converts the whole vocabulary on every access: read it once
        self.vocab: list[bytes] = [bytes(raw) for raw in self.info.decoded_vocab]
        self.by_bytes: dict[bytes, int] = {}
        for tid, raw in enumerate(self.vocab[:vocab_size]):
            if raw and tid not in special:
                self.by_bytes.setdefault(raw, tid)
        self.max_token_bytes = min(max(map(len, self.by_bytes), default=1), 64)

    def closing_text(self, matcher, limit: int) -> Optional[bytes]:
        """A short UTF-8 text that completes the JSON from ``matcher``'s state (the state is not changed).

        Character by character: a multi-byte character in progress is finished first; forced text (keys,
        separators) is taken as xgrammar's jump-forward string; inside a string a quote closes it; otherwise
        ``]`` / ``}`` close a container; a value still owed is the emptiest one (``[]``, ``""``, ``{}``...); a
        span of the input text that cannot end yet gets any character that continues it.
        """
        sim = matcher.fork()
        out: list[bytes] = []
        for _ in range(4 * limit + 16):
            if sim.is_completed():
                return b"".join(out)
            try:
                forced = sim.find_jump_forward_string().encode("utf-8")
            except UnicodeDecodeError:  # inside a multi-byte character (finished below)
                forced = b""
            if forced:
                sim.accept_string(forced)
                out.append(forced)
                continue
            if sim.accept_string(b'"'):
                if _after_string(sim):
                    out.append(b'"')  # the quote ended a string
                    continue
                sim.rollback(1)
            step = next((c for c in _CLOSERS + _CONTINUATIONS + _PRINTABLE if sim.accept_string(c)), None)
            if step is None:
                return None
            out.append(step)
        return None

    def spell(self, matcher, data: bytes, limit: int) -> Optional[list[int]]:
        """Tokens (longest vocabulary match first) that ``matcher`` accepts and that spell ``data``; ``None`` if
        more than ``limit`` are needed or there are none.

        The longest matches are found once per text (the same closing texts come back step after step) and
        the grammar is asked only about them while it accepts them, as it mostly does (closing brackets,
        separators, keys): then they are the spelling a search through the grammar would find."""
        tokens = self._remembered(self._longest, data, lambda text: self._spelling(text, lambda token: True))
        sim = matcher.fork()
        if tokens is None or not all(sim.accept_token(t) for t in tokens[:limit]):
            sim = matcher.fork()
            tokens = self._spelling(data, sim.accept_token)
        return list(tokens) if tokens is not None and len(tokens) <= limit else None

    def _spelling(self, data: bytes, accepts) -> Optional[list[int]]:
        """``data`` in tokens, left to right, each the longest vocabulary match that ``accepts`` takes."""
        pos, tokens = 0, []
        while pos < len(data):
            for size in range(min(self.max_token_bytes, len(data) - pos), 0, -1):
                tid = self.by_bytes.get(data[pos:pos + size])
                if tid is not None and accepts(tid):
                    tokens.append(tid)
                    pos += size
                    break
            else:
                return None
        return tokens

    def encode(self, matcher, text: str) -> Optional[list[int]]:
        """The tokenizer's encoding of ``text`` when it spells exactly ``text`` and ``matcher`` accepts it."""
        tokens = self._remembered(self._encoded, text, self._encoding)
        if tokens is None:
            return None
        sim = matcher.fork()
        return list(tokens) if all(sim.accept_token(t) for t in tokens) else None

    def _encoding(self, text: str) -> Optional[list[int]]:
        """The tokenizer's encoding of ``text``; ``None`` when those tokens do not spell exactly ``text``."""
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        spells = all(t < self.vocab_size for t in tokens) and b"".join(self.vocab[t] for t in tokens) == text.encode()
        return tokens if spells else None

    def _remembered(self, store: dict, key, compute):
        """``store[key]``, computed by ``compute(key)`` the first time (the oldest entry dropped beyond
        ``MAX_TEXTS``)."""
        if key not in store:
            store[key] = compute(key)
            if len(store) > self.MAX_TEXTS:
                del store[next(iter(store))]
        return store[key]

    def grammar(self, schema: dict):
        """The compiled grammar of ``schema``; one carrying the record's text (``x-span-text``, grounded
        decoding) is compiled from :func:`~instructkgc.infer.grammar.answer_grammar`. Grammars are cached
        by the schema's JSON text (text included), the least recently used dropped beyond ``MAX_GRAMMARS``."""
        key = json.dumps(schema, sort_keys=False, ensure_ascii=False)
        compiled = self._grammars.pop(key, None)
        if compiled is None:
            if SPAN_TEXT in schema:
                compiled = self.compiler.compile_grammar(answer_grammar(schema))
            else:
                compiled = self.compiler.compile_json_schema(key, **JSON_GRAMMAR_OPTIONS)
            if len(self._grammars) >= self.MAX_GRAMMARS:
                del self._grammars[next(iter(self._grammars))]
        self._grammars[key] = compiled  # (re)inserted last: the most recently used
        return compiled

    def matcher(self, schema: dict):
        return self.xgr.GrammarMatcher(self.grammar(schema))


class RowGrammar:
    """One answer's grammar state: its xgrammar matcher and the closing policy's estimate.

    The HF ``generate`` path (:class:`JsonSchemaProcessor`) and the engine's own greedy loop both drive rows
    through :meth:`constrain` (mask the logits, keep the answer closable) and ``matcher.accept_token``.
    """

    CHECK_EVERY = 16  # steps between estimates of the closing length outside the end zone
    SLACK = 48  # the end zone: remaining budget <= last closing estimate + SLACK

    def __init__(self, cache: GrammarCache, matcher, max_new_tokens: int):
        self.cache = cache
        self.matcher = matcher
        self.max_new_tokens = max_new_tokens
        self.closing_estimate = 0
        self.forced = 0  # tokens chosen by the closing policy (for diagnostics)

    def closing_length(self, matcher, limit: int) -> tuple[int, Optional[int]]:
        """Tokens the closing policy needs to finish from ``matcher``'s state (stop token included) and the
        first of them; ``(0, None)`` once terminated; ``(limit + 1, None)`` when it needs more than ``limit`` or
        finds no way."""
        if matcher.is_terminated():
            return 0, None
        text = self.cache.closing_text(matcher, limit)
        tokens = None if text is None else self.cache.spell(matcher, text, limit)
        if tokens is None:
            return limit + 1, None
        tokens.append(self.cache.stop_token_ids[0])
        return len(tokens), tokens[0]

    def constrain(self, scores: torch.Tensor, step: int) -> None:
        """Keep a closable answer in ``scores`` (this row's logits, already masked by the grammar) at ``step``
        (new tokens so far): where :meth:`closing_choice` overrides the arg-max, only its token is left."""
        choice = int(scores.argmax())
        token = self.closing_choice(choice, step)
        if token != choice:
            scores.fill_(float("-inf"))
            scores[token] = 0.0

    def closing_choice(self, choice: int, step: int) -> int:
        """The token to take at ``step`` (new tokens so far) when the model's masked arg-max is ``choice``: near
        the end of the budget, or when ``choice`` may begin a new item or object, a ``choice`` that would leave too
        few tokens to close the JSON is replaced by the first closing token."""
        m = self.matcher
        remaining = self.max_new_tokens - step
        if remaining > self.closing_estimate + self.SLACK:
            if step % self.CHECK_EVERY == 0:
                self.closing_estimate, _ = self.closing_length(m, remaining)
            raw = self.cache.vocab[choice]
            if b"{" not in raw and b"," not in raw:
                return choice
            # a new item or object may begin: its required keys (an event's argument roles) can owe more than
            # the estimate
        after = m.fork()
        if after.accept_token(choice):
            need, _ = self.closing_length(after, remaining)
            if 1 + need <= remaining:
                self.closing_estimate = need
                return choice
        need, token = self.closing_length(m, remaining)
        self.closing_estimate = need
        if token is None:
            return choice  # no closing text from here (e.g. inside a multi-byte character): the model's choice
        self.forced += 1
        return token

    def allowed_tokens(self, bitmask: torch.Tensor) -> torch.Tensor:
        """The ids the grammar allows next, ascending, filled through ``bitmask`` (an xgrammar token bitmask of
        one row, reused between calls). Unpacked with numpy from the non-zero words only: torch's elementwise
        ops over every bit of the vocabulary cost several times more per call (6.6x measured, far more when
        other work shares the cores: each small op is spread over the threads)."""
        self.matcher.fill_next_token_bitmask(bitmask, 0)
        words = bitmask[0].numpy()
        nonzero = np.flatnonzero(words)
        bits = np.flatnonzero(np.unpackbits(words[nonzero].view(np.uint8), bitorder="little"))
        tokens = nonzero[bits >> 5] * 32 + (bits & 31)
        return torch.from_numpy(tokens[tokens < self.cache.vocab_size])

    def accepted_prefix(self, forced: Sequence[int], tokens: Sequence[int]) -> int:
        """How many of ``tokens`` the grammar accepts in a row after ``forced`` (which it accepts), from the
        matcher's state; the matcher itself is left as it is."""
        fork = self.matcher.fork()
        for token in forced:
            fork.accept_token(token)
        count = 0
        while count < len(tokens) and not fork.is_terminated() and fork.accept_token(tokens[count]):
            count += 1
        return count

    def forced_tokens(self, limit: int) -> list[int]:
        """Tokens spelling the text the grammar forces next (xgrammar's jump-forward string), at most
        ``limit``; ``[]`` when the next character is open. The tokenizer's own encoding is proposed when it
        spells exactly that text and the grammar accepts it, else the longest vocabulary matches."""
        if limit <= 0:
            return []
        try:
            text = self.matcher.find_jump_forward_string()
        except UnicodeDecodeError:  # inside a multi-byte character
            return []
        if not text:
            return []
        tokens = self.cache.encode(self.matcher, text)
        if tokens is None:
            tokens = self.cache.spell(self.matcher, text.encode("utf-8"), 4 * len(text)) or []
        return tokens[:limit]


class JsonSchemaProcessor(LogitsProcessor):
    """Constrain each row of one ``generate`` call to its JSON Schema (``None`` leaves a row free).

    Create one per ``generate`` call. ``prompt_len`` is the (padded) prompt width of the batch. The bitmask is
    applied on the logits' device (no copy of the logits to the CPU and back).
    """

    def __init__(self, cache: GrammarCache, schemas: Sequence[Optional[dict]], prompt_len: int,
                 max_new_tokens: int, pad_token_id: int):
        self.cache = cache
        self.grammars = [RowGrammar(cache, cache.matcher(s), max_new_tokens) if s is not None else None
                         for s in schemas]
        self.rows = [i for i, g in enumerate(self.grammars) if g is not None]
        self.prompt_len = prompt_len
        self.pad_token_id = pad_token_id
        self.bitmask = cache.xgr.allocate_token_bitmask(len(schemas), cache.vocab_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        active = []
        for i in self.rows:
            m = self.grammars[i].matcher
            if step > 0 and not m.is_terminated():
                m.accept_token(int(input_ids[i, -1]))  # always allowed: the token was masked last step
            if m.is_terminated():
                scores[i].fill_(float("-inf"))
                scores[i, self.pad_token_id] = 0.0  # finished rows only produce padding
            else:
                m.fill_next_token_bitmask(self.bitmask, i)
                active.append(i)
        if not active:
            return scores
        self.cache.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device, non_blocking=True),
                                                   vocab_size=self.cache.vocab_size, indices=active)
        for i in active:
            self.grammars[i].constrain(scores[i], step)
        return scores
