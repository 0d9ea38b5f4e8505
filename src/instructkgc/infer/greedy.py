"""The HF engine's own greedy decoding loop: continuous batching, shared-prefix reuse, jump-forward decoding.

* **Continuous batching.** Up to ``batch_size`` answers are decoded together over one key/value cache; an answer
  that ends leaves the batch at once and the next prompt takes its place, so no row idles until the longest
  answer of a static batch is done. Rows are left-padded inside the cache and every row has its own position
  ids, so each row sees exactly its own tokens at their own positions.
* **Shared-prefix reuse.** Prompts of one file repeat a long common start (template, instruction sentence,
  schema chunk). Prompts are grouped by their longest common token prefix; the prefix's cache is computed once
  per group and each prompt prefills only the rest.
* **Jump-forward decoding.** When the grammar admits exactly one continuation text (``", "location": [``), its
  tokens are fed to the model in the same forward pass as the token just chosen, instead of one pass each. The
  pass gives the logits at every one of those positions, and each proposed token is kept only while it is
  the greedy (masked arg-max) choice there, as in speculative decoding with the grammar as the draft: the
  first mismatch is replaced by the greedy token and the rest is discarded (masked out of the cache). The
  answer is therefore token for token the plain greedy answer, whatever tokenisation the grammar text gets.

Only plain greedy decoding runs here (no sampling, beams, repetition penalties or ``min_new_tokens``), and only
for Hugging Face ``PreTrainedModel`` decoders whose cache is a plain ``DynamicCache``; anything else is left to
``generate`` (:class:`~instructkgc.infer.hf_engine.HFEngine` decides).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

MIN_PREFIX = 16  # shortest common prefix worth a cache of its own (tokens)
MAX_DRAFT = 6  # forced tokens proposed per row and step


@dataclass
class DecodeStats:
    """What the loop did (summed over ``generate`` calls): model passes, tokens, reuse, forced tokens."""

    decode_passes: int = 0  # forward passes over the running batch
    new_tokens: int = 0  # answer tokens chosen (stop tokens included)
    forced_tokens: int = 0  # of those, proposed by the grammar and confirmed without a pass of their own
    prefill_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from a shared prefix's cache instead

    @property
    def forced_share(self) -> float:
        return self.forced_tokens / self.new_tokens if self.new_tokens else 0.0


@dataclass
class _Row:
    index: int  # position in the prompts
    grammar: object  # RowGrammar or None
    tokens: list = field(default_factory=list)  # new tokens chosen so far
    pending: list = field(default_factory=list)  # tokens to feed next pass: the last chosen + forced ones
    length: int = 0  # tokens of this row in the cache (the position of the next one)
    done: bool = False


def supports(model) -> bool:
    """Whether :class:`GreedyLoop` can drive ``model`` (a ``PreTrainedModel`` decoder)."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and not model.config.is_encoder_decoder


def prefix_groups(prompts: Sequence[Sequence[int]], min_prefix: int = MIN_PREFIX) -> tuple[list[int], list[int]]:
    """An order of the prompts with prompts sharing a start next to each other, and for each prompt the length
    of the prefix it shares with its group (0: none). A prefix leaves at least one token of each prompt."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    shared = [0] * len(prompts)
    start = 0
    while start < len(order):
        first = prompts[order[start]]
        end, common = start + 1, len(first) - 1
        while end < len(order):
            nxt = prompts[order[end]]
            c = min(common, _common_prefix(first, nxt), len(nxt) - 1)
            if c < min_prefix or (end > start + 1 and c < common):
                break
            common, end = c, end + 1
        if end - start > 1:
            for k in order[start:end]:
                shared[k] = common
        start = end
    return order, shared


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


class GreedyLoop:
    """Greedy answers for token-id prompts with one model; see the module docstring."""

    def __init__(self, model, stop_token_ids: Sequence[int], max_new_tokens: int, batch_size: int,
                 prefix_reuse: bool = True, jump_forward: bool = True):
        self.model = model
        self.stops = set(stop_token_ids)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.jump_forward = jump_forward
        self.stats = DecodeStats()
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._bitmask = None

    # ---- model calls ---------------------------------------------------------------------------------------
    def _forward(self, ids, mask, positions, cache, logits_to_keep: int):
        device = self.model.device
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                         use_cache=True, logits_to_keep=logits_to_keep, **{self._cache_arg: cache})
        return out.logits.float(), cache

    def _prefill(self, prompt: Sequence[int], start: int, prefix_kv) -> tuple[torch.Tensor, list]:
        """Logits after ``prompt`` and its cache (one (keys, values) per layer), computing from ``start`` on top
        of ``prefix_kv`` (the cache of ``prompt[:start]``)."""
        cache = _cache_of(prefix_kv or [])
        rest = torch.tensor([prompt[start:]], dtype=torch.long)
        positions = torch.arange(start, len(prompt)).unsqueeze(0)
        logits, cache = self._forward(rest, torch.ones((1, len(prompt)), dtype=torch.long), positions, cache, 1)
        self.stats.prefill_tokens += len(prompt) - start
        self.stats.reused_tokens += start
        return logits[0, -1], _layers(cache)

    # ---- choosing tokens -----------------------------------------------------------------------------------
    def _choose(self, row: _Row, logits: torch.Tensor) -> int:
        """The greedy token for ``row`` from its ``logits`` (masked by its grammar; closing policy applied)."""
        g = row.grammar
        if g is not None:
            xgr = g.cache.xgr
            if self._bitmask is None:
                self._bitmask = xgr.allocate_token_bitmask(1, g.cache.vocab_size)
            g.matcher.fill_next_token_bitmask(self._bitmask, 0)
            xgr.apply_token_bitmask_inplace(logits.unsqueeze(0), self._bitmask.to(logits.device),
                                            vocab_size=g.cache.vocab_size)
            g.constrain(logits, len(row.tokens))
        token = int(logits.argmax())
        if g is not None:
            g.matcher.accept_token(token)
        row.tokens.append(token)
        self.stats.new_tokens += 1
        row.done = token in self.stops or len(row.tokens) >= self.max_new_tokens
        return token

    def _next_input(self, row: _Row, token: int) -> None:
        """Feed ``token`` next, with the tokens the grammar forces after it (jump-forward)."""
        row.pending = [token]
        if self.jump_forward and row.grammar is not None:
            room = min(MAX_DRAFT, self.max_new_tokens - len(row.tokens) - 1)
            row.pending += row.grammar.forced_tokens(room)

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], grammars: Sequence[Optional[object]],
            finished: Callable[[int, list], None]) -> None:
        """Decode every prompt; ``finished(index, tokens)`` is called as each answer ends."""
        if self.prefix_reuse:
            order, shared = prefix_groups(prompts)
        else:
            order, shared = list(range(len(prompts))), [0] * len(prompts)
        queue = list(reversed(order))  # popped from the end
        prefixes: dict[tuple, list] = {}
        rows: list[_Row] = []
        kv: list = []  # per layer (keys, values) of the running batch: [rows, heads, columns, dim]
        mask = torch.zeros((0, 0), dtype=torch.bool)  # which cache columns hold a real token, per row
        while queue or rows:
            admitted = []
            running = sum(not r.done for r in rows)
            while queue and running + len(admitted) < self.batch_size:
                i = queue.pop()
                n = shared[i]
                prefix_kv = None
                if n:
                    key = tuple(prompts[i][:n])
                    if key not in prefixes:
                        prefixes[key] = self._prefill(prompts[i][:n], 0, None)[1]
                    prefix_kv = prefixes[key]
                logits, row_kv = self._prefill(prompts[i], n, prefix_kv)
                row = _Row(i, grammars[i], length=len(prompts[i]))
                token = self._choose(row, logits)
                if row.done:
                    finished(i, row.tokens)
                    continue
                self._next_input(row, token)
                admitted.append((row, row_kv))
            if admitted or any(r.done for r in rows) or _holes(mask) > 16:
                rows, kv, mask = _relayout(rows, kv, mask, admitted)
            if not rows:
                continue
            kv, mask = self._step(rows, kv, mask)
            for r in rows:
                if r.done:
                    finished(r.index, r.tokens)

    def _step(self, rows: list[_Row], kv: list, mask: torch.Tensor):
        """One forward pass over the running batch: every row's pending tokens, right-aligned."""
        width = max(len(r.pending) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        new = torch.zeros((len(rows), width), dtype=torch.bool)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            w = len(r.pending)
            ids[b, width - w:] = torch.tensor(r.pending)
            new[b, width - w:] = True
            positions[b] = r.length
            positions[b, width - w:] = torch.arange(r.length, r.length + w)
        cache = _cache_of(kv)
        mask = torch.cat([mask, new], dim=1)
        logits, cache = self._forward(ids, mask, positions, cache, width)
        self.stats.decode_passes += 1
        for b, r in enumerate(rows):
            fed, start = r.pending, width - len(r.pending)
            j = 0
            while True:
                token = self._choose(r, logits[b, start + j])
                if r.done:
                    break
                if j + 1 < len(fed) and token == fed[j + 1]:
                    j += 1  # the forced token is the greedy one: kept, its logits are already here
                    self.stats.forced_tokens += 1
                    continue
                break
            r.length += j + 1
            mask[b, mask.shape[1] - width + start + j + 1:] = False  # forced tokens after a mismatch
            if not r.done:
                self._next_input(r, token)
        return _layers(cache), mask


def _cache_of(kv: list):
    """A ``DynamicCache`` holding ``kv`` (the tensors themselves: ``update`` concatenates into new ones)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k[:, :, :0], v[:, :, :0], i)
        cache.layers[i].keys, cache.layers[i].values = k, v
    return cache


def _layers(cache) -> list:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _holes(mask: torch.Tensor) -> int:
    """Cache columns the longest row does not use."""
    return 0 if mask.numel() == 0 else mask.shape[1] - int(mask.sum(1).max())


def _relayout(rows: list[_Row], kv: list, mask: torch.Tensor, admitted: list):
    """The batch without its finished rows, with the ``admitted`` rows (each with its own cache) added, every
    row's real columns packed to the right (left padding) and the cache as wide as the longest row."""
    keep = [b for b, r in enumerate(rows) if not r.done]
    counts = mask.sum(1).tolist()
    width = max([counts[b] for b in keep] + [r.length for r, _ in admitted] + [0])
    new_rows = [rows[b] for b in keep] + [r for r, _ in admitted]
    new_mask = torch.zeros((len(new_rows), width), dtype=torch.bool)
    source = torch.zeros((len(keep), width), dtype=torch.long)  # old cache column of each new one (kept rows)
    for j, b in enumerate(keep):
        n = counts[b]
        if n:
            source[j, width - n:] = mask[b].nonzero().squeeze(1)
            new_mask[j, width - n:] = True
    for a, (r, _) in enumerate(admitted):
        new_mask[len(keep) + a, width - r.length:] = True
    keep_index = torch.tensor(keep, dtype=torch.long).unsqueeze(1)
    padding = ~new_mask[:len(keep), None, :, None]
    new_kv = []
    layers = len(kv) if kv else len(admitted[0][1]) if admitted else 0
    for layer in range(layers):
        pair = []
        for t in range(2):
            ref = kv[layer][t] if kv else admitted[0][1][layer][t]
            out = ref.new_empty((len(new_rows), ref.shape[1], width, ref.shape[3]))
            if keep:  # one gather per layer: [kept rows, width, heads, dim], padding columns zeroed
                out[:len(keep)] = kv[layer][t][keep_index, :, source].transpose(1, 2)
                out[:len(keep)].masked_fill_(padding, 0.0)
            for a, (r, row_kv) in enumerate(admitted):
                out[len(keep) + a, :, :width - r.length] = 0.0
                out[len(keep) + a, :, width - r.length:] = row_kv[layer][t][0]
            pair.append(out)
        new_kv.append(tuple(pair))
    return new_rows, new_kv, new_mask
