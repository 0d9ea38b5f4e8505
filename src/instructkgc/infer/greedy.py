"""The HF engine's own greedy decoding loop: continuous batching, shared-prefix reuse, jump-forward decoding and
lookup drafts.

All running answers live in one packed sequence: each forward pass feeds only real tokens, one after another
(no padding), and the key/value cache is one growing row of columns, each tagged with the answer (or shared
prefix) it belongs to. A 4-D attention mask lets every token see exactly the columns of its own answer and of its
prefix, earlier than itself, at its own position ids, so each answer is computed as if it were alone.

* **Continuous batching.** Up to ``batch_size`` answers are decoded together; an answer that ends leaves at once
  and the next prompt is prefilled in the very next pass, packed with the other answers' decoding tokens. Its
  columns become holes, dropped from the cache when they make up a tenth of it.
* **Shared-prefix reuse.** Prompts of one file repeat a long common start (template, instruction sentence,
  schema chunk). Prompts are grouped by their longest common token prefix; the prefix is computed once per group,
  its columns are seen by every answer of the group, and each prompt prefills only the rest.
* **Jump-forward decoding.** When the grammar admits exactly one continuation text (``", "location": [``), its
  tokens are fed in the same pass as the token just chosen instead of one pass each. The pass gives the logits at
  every one of those positions, and each proposed token is kept only while it is the greedy (masked arg-max)
  choice there, as in speculative decoding with the grammar as the draft: the first mismatch is replaced by the
  greedy token and the rest is discarded (its columns become holes). The answer is therefore token for token the
  plain greedy answer, whatever tokenisation the grammar text gets.
* **Lookup drafts** (prompt lookup decoding). Extraction answers copy the input's spans, and a small model's
  answers repeat themselves (``"Serra", "Serra", ...``). After the chosen and forced tokens, the tokens that
  followed the latest earlier occurrence of the last ``LOOKUP_NGRAM`` tokens in the prompt and the answer so far
  are proposed too, as far as the grammar accepts them, and checked in the same pass like the forced ones:
  kept while each is the greedy choice. A row's draft length doubles after a draft kept whole and falls to what
  was kept after a miss, so rows whose drafts miss cost few positions.
* **Logits of the allowed tokens only.** Under a grammar the arg-max is taken over the few tokens it allows (a
  span's continuations, a separator's spellings: rarely more than a few hundred of the vocabulary), so for those
  the output layer multiplies only its rows of these tokens. A row whose grammar allows more than ``MAX_NARROW``
  tokens, a row without grammar, and a model whose output layer is not a plain ``nn.Linear`` (a LoRA or
  ``modules_to_save`` wrapper, hooks) get whole rows of logits, computed together for the pass. The model's
  final rescaling of logits (soft-capping, scaling) is left out: it is monotonic and does not move the arg-max.

Under SDPA the passes use :func:`packed_sdpa` (registered as ``instructkgc_packed`` in transformers' attention
interface), and the cache is split into **attention groups** of ``GROUP_ROWS`` answers: each group has its own
packed columns (its answers' and a copy of the shared prefixes'), and each group's tokens attend over those only,
in one SDPA call per group. Of one cache common to all answers a token sees only its own answer's and prefix's
columns (an eighth of them with 16 answers on the NER benchmark), so groups cut the attention's work by about
their number, more so the longer the prompts. SDPA broadcasts grouped key/value heads itself (transformers only
does that without a mask). Eager attention (additive masks) keeps one group.

Only plain greedy decoding runs here (no sampling, beams, repetition penalties or ``min_new_tokens``), and only
for Hugging Face ``PreTrainedModel`` decoders that take a 4-D attention mask (SDPA or eager attention; full or
sliding-window layers); anything else is left to ``generate`` (:class:`~instructkgc.infer.hf_engine.HFEngine`
decides).
"""
from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional, Sequence

import torch
from transformers import AttentionInterface, Cache
from transformers.cache_utils import DynamicLayer

MIN_PREFIX = 16  # shortest common prefix worth a cache of its own (tokens)
MAX_DRAFT = 16  # forced and lookup tokens proposed per row and step
LOOKUP_NGRAM = 3  # tokens matched to find a lookup draft (NER benchmark: 54 passes against 59 with 1 and 57 with 2)
MAX_NARROW = 1024  # most allowed tokens scored from the output layer's rows of them (more: whole rows of logits)
NO_PREFIX = -2  # owner id no column has (holes are -1)
MAX_HOLES = 0.1  # share of hole columns that makes the cache compact (attention reads every column; a compaction
# copies the cache once: dropping holes at a tenth made the NER benchmark 4-5% faster than at half)
GROUP_ROWS = 4  # answers per attention group (SDPA models; see the module docstring)


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of the loop's passes: for each attention group, its tokens' queries over its columns, with its
    mask (``key`` and ``value`` are the layer's :class:`_ColumnLayer`; ``attention_mask`` is not used)."""
    plan = key.columns.plan
    types = getattr(module.config, "layer_types", None)
    masks = plan.windowed if types and types[module.layer_idx] == "sliding_attention" else plan.full
    outs = []
    for g, (start, end) in enumerate(plan.queries):
        if start < end:
            keys, values = key.group(g)
            outs.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end], keys, values, attn_mask=masks[g], dropout_p=dropout, scale=scaling,
                enable_gqa=query.shape[1] != keys.shape[1]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
    return out.transpose(1, 2).contiguous(), None


PACKED_ATTENTION = "instructkgc_packed"
AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)


@dataclass
class DecodeStats:
    """What the loop did (summed over ``generate`` calls): model passes, tokens, reuse, forced tokens."""

    decode_passes: int = 0  # forward passes (each decodes the running answers and prefills admitted prompts)
    new_tokens: int = 0  # answer tokens chosen (stop tokens included)
    forced_tokens: int = 0  # of those, proposed by the grammar and confirmed without a pass of their own
    lookup_tokens: int = 0  # of those, proposed by a lookup draft and confirmed without a pass of their own
    drafted_tokens: int = 0  # lookup tokens proposed (kept or not)
    narrow_tokens: int = 0  # of those, chosen from the logits of the tokens the grammar allowed only
    prefill_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from a shared prefix's columns instead

    @property
    def forced_share(self) -> float:
        return self.forced_tokens / self.new_tokens if self.new_tokens else 0.0

    @property
    def lookup_share(self) -> float:
        return self.lookup_tokens / self.new_tokens if self.new_tokens else 0.0


@dataclass
class _Prefix:
    owner: int  # id of its columns
    waiting: int  # prompts of its group not admitted yet
    users: int = 0  # admitted prompts of its group still decoding


@dataclass
class _Row:
    index: int  # position in the prompts
    grammar: object  # RowGrammar or None
    owner: int  # id of its columns
    group: int  # its attention group
    prefix: Optional[_Prefix]
    pending: list  # tokens to feed next pass: a prompt's rest, or the last chosen token + forced + drafted ones
    length: int  # tokens of this answer in the cache (prefix included): the position of the next one
    prefilling: bool = True  # ``pending`` is prompt text (logits needed after its last token only)
    narrow: bool = False  # its grammar allowed few tokens last time: score only those (see ``_Head``)
    tokens: list = field(default_factory=list)  # new tokens chosen so far
    done: bool = False
    lookup: Optional["_Lookup"] = None
    drafted: int = 0  # lookup tokens at the end of ``pending``
    draft_limit: int = MAX_DRAFT  # most lookup tokens to propose next


def supports(model) -> bool:
    """Whether :class:`GreedyLoop` can drive ``model`` (a ``PreTrainedModel`` decoder taking 4-D masks)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or model.config.is_encoder_decoder:
        return False
    config = model.config
    return (getattr(config, "_attn_implementation", "eager") in ("sdpa", "eager")
            and set(getattr(config, "layer_types", None) or ()) <= {"full_attention", "sliding_attention"})


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
                 prefix_reuse: bool = True, jump_forward: bool = True, lookup: bool = True):
        self.model = model
        self.stops = set(stop_token_ids)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.jump_forward = jump_forward
        self.lookup = lookup
        self.stats = DecodeStats()
        self._decoder = model.get_decoder()  # hidden states; the output layer is applied here (``_Head``)
        params = inspect.signature(self._decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._head = _Head(model.get_output_embeddings())
        config = model.config
        self._layer_types = sorted(set(getattr(config, "layer_types", None) or ()))
        windowed = "sliding_attention" in self._layer_types or (
            not self._layer_types and getattr(config, "use_sliding_window", True))
        self._window = getattr(config, "sliding_window", None) if windowed else None
        self._additive = getattr(config, "_attn_implementation", "eager") != "sdpa"
        # packed_sdpa for SDPA models; not where setting the attention would also reach sub-models' configs
        self._packed = not self._additive and not getattr(config, "sub_configs", None)
        self._groups = -(-batch_size // GROUP_ROWS) if self._packed else 1
        self._bitmask = None

    # ---- choosing tokens -----------------------------------------------------------------------------------
    def _choose(self, row: _Row, hidden: torch.Tensor, logits: Optional[torch.Tensor]) -> int:
        """The greedy token for ``row`` from its ``logits``, or from its ``hidden`` state when the logits were not
        computed (masked by its grammar; closing policy applied)."""
        g = row.grammar
        if g is None:
            token = int(logits.argmax())
        else:
            if self._bitmask is None:
                self._bitmask = g.cache.xgr.allocate_token_bitmask(1, g.cache.vocab_size)
            allowed = g.allowed_tokens(self._bitmask)
            row.narrow = self._head.weight is not None and len(allowed) <= MAX_NARROW
            if logits is None and row.narrow:
                chosen = self._head.rows(hidden, allowed)
                self.stats.narrow_tokens += 1
            else:
                if logits is None:  # narrow last time, not now: whole logits for this one position
                    logits = self._head.logits(hidden[None])[0]
                chosen = logits[allowed.to(logits.device)].cpu()
            # the arg-max over the allowed tokens (ascending: ties go to the lowest id, as over the whole row)
            token = g.closing_choice(int(allowed[int(chosen.argmax())]), len(row.tokens))
            g.matcher.accept_token(token)
        row.tokens.append(token)
        self.stats.new_tokens += 1
        row.done = token in self.stops or len(row.tokens) >= self.max_new_tokens
        return token

    def _next_input(self, row: _Row, token: int) -> None:
        """Feed ``token`` next, with the tokens the grammar forces after it (jump-forward) and a lookup draft."""
        row.pending = [token]
        room = min(MAX_DRAFT, self.max_new_tokens - len(row.tokens) - 1)
        if self.jump_forward and row.grammar is not None:
            row.pending += row.grammar.forced_tokens(room)
        row.drafted = 0
        room = min(room - len(row.pending) + 1, row.draft_limit)
        if row.lookup is not None and room > 0:
            draft = row.lookup.draft(row.tokens, row.pending[1:], room)
            if draft and row.grammar is not None:
                draft = draft[:row.grammar.accepted_prefix(row.pending[1:], draft)]
            row.pending += draft
            row.drafted = len(draft)

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, prompts: Sequence[Sequence[int]], grammars: Sequence[Optional[object]],
            finished: Callable[[int, list], None]) -> None:
        """Decode every prompt; ``finished(index, tokens)`` is called as each answer ends."""
        if self.prefix_reuse:
            order, shared = prefix_groups(prompts)
        else:
            order, shared = list(range(len(prompts))), [0] * len(prompts)
        prefixes: dict[tuple, _Prefix] = {}
        for i in order:
            if shared[i]:
                key = tuple(prompts[i][:shared[i]])
                prefixes.setdefault(key, _Prefix(owner=-1, waiting=0)).waiting += 1
        queue = deque(order)
        columns = _Columns(self._groups, self._packed)
        rows: list[_Row] = []
        sizes = [0] * self._groups  # running answers per attention group
        self._ids = 0
        while queue or rows:
            # fed this pass, in order: (owner, owner of the prefix it sees, first position, tokens, attention group);
            # shared prefixes first (group None: every group stores them), then each group's answers
            segments = []
            while queue and len(rows) < self.batch_size:
                group = sizes.index(min(sizes))
                sizes[group] += 1
                rows.append(self._admit(queue.popleft(), group, prompts, shared, grammars, prefixes, segments))
            rows.sort(key=lambda r: r.group)
            keep = []  # indices in the pass of the tokens whose logits are needed
            start = sum(len(s[3]) for s in segments)
            for r in rows:
                segments.append((r.owner, r.prefix.owner if r.prefix else NO_PREFIX, r.length, r.pending, r.group))
                start += len(r.pending)
                keep += [start - 1] if r.prefilling else range(start - len(r.pending), start)
            hidden = self._forward(columns, segments, keep)
            self.stats.decode_passes += 1
            states = hidden.split([1 if r.prefilling else len(r.pending) for r in rows])  # in ``keep`` order
            for r, state, logits in zip(rows, states, self._whole_logits(rows, states)):
                fed = r.pending
                accepted = self._settle(r, state, logits)
                columns.drop_tail(r.owner, r.group, len(fed) - accepted)  # forced tokens after a mismatch
                if r.done:
                    finished(r.index, r.tokens)
                    sizes[r.group] -= 1
                    columns.drop(r.owner)
                    if r.prefix is not None:
                        r.prefix.users -= 1
                        if not r.prefix.users and not r.prefix.waiting:
                            columns.drop(r.prefix.owner)
            rows = [r for r in rows if not r.done]
            columns.compact()

    def _admit(self, i: int, group: int, prompts, shared, grammars, prefixes, segments: list) -> _Row:
        """A row for prompt ``i`` in attention group ``group``: its prompt's rest is prefilled in this pass, after
        the shared prefix of its prompts' group (added to ``segments`` if the first of those prompts)."""
        n = shared[i]
        prefix = None
        if n:
            prefix = prefixes[tuple(prompts[i][:n])]
            if prefix.owner < 0:
                prefix.owner = self._new_id()
                segments.append((prefix.owner, NO_PREFIX, 0, list(prompts[i][:n]), None))
                self.stats.prefill_tokens += n
            prefix.waiting -= 1
            prefix.users += 1
            self.stats.reused_tokens += n
        self.stats.prefill_tokens += len(prompts[i]) - n
        return _Row(i, grammars[i], self._new_id(), group, prefix, list(prompts[i][n:]), n,
                    narrow=grammars[i] is not None and self._head.weight is not None,
                    lookup=_Lookup(prompts[i]) if self.lookup else None)

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids - 1

    def _whole_logits(self, rows: list[_Row], states: Sequence[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        """For each row, the whole logits of its hidden ``states`` in the pass, computed together for the rows that
        are not narrow (``None`` for the others)."""
        whole = [h for r, h in zip(rows, states) if not r.narrow]
        if not whole:
            return [None] * len(rows)
        logits = iter(self._head.logits(torch.cat(whole)).split([len(h) for h in whole]))
        return [None if r.narrow else next(logits) for r in rows]

    def _settle(self, row: _Row, hidden: torch.Tensor, logits: Optional[torch.Tensor]) -> int:
        """Choose ``row``'s tokens from the hidden states (and whole logits, if computed) of its pass, one per fed
        token whose successor is needed, and set what it feeds next; returns how many fed tokens stay in the cache
        (a forced token after a mismatch does not)."""
        fed = row.pending

        def choose(k: int) -> int:
            return self._choose(row, hidden[k], None if logits is None else logits[k])

        if row.prefilling:
            token, accepted = choose(0), len(fed)
        else:
            accepted = 1
            while True:
                token = choose(accepted - 1)
                if row.done or accepted >= len(fed) or token != fed[accepted]:
                    break
                accepted += 1  # the proposed token is the greedy one: kept, its logits are already here
            drafts = max(0, accepted - (len(fed) - row.drafted))  # lookup tokens kept
            self.stats.forced_tokens += accepted - 1 - drafts
            self.stats.lookup_tokens += drafts
            self.stats.drafted_tokens += row.drafted
            if row.drafted:
                row.draft_limit = min(MAX_DRAFT, 2 * row.draft_limit) if drafts == row.drafted else max(1, drafts)
        row.length += accepted
        row.prefilling = False
        if not row.done:
            self._next_input(row, token)
        return accepted

    def _forward(self, columns: "_Columns", segments: list, keep: list) -> torch.Tensor:
        """Run the model's decoder over ``segments`` (appended to ``columns``) and return its last hidden states
        at the packed indices ``keep`` ([len(keep), hidden size])."""
        tokens = [t for s in segments for t in s[3]]
        positions = torch.cat([torch.arange(s[2], s[2] + len(s[3])) for s in segments])
        plan = columns.append(segments, positions, self._window)
        device = self.model.device
        if self._packed:  # packed_sdpa takes the groups' masks from the plan; the mask given only has to be 4-D
            plan.full = [None if m is None else self._mask(m, device, additive=True) for m in plan.full]
            plan.windowed = [None if m is None else self._mask(m, device, additive=True) for m in plan.windowed]
            masks = torch.ones((1, 1, len(tokens), 1), dtype=torch.bool, device=device)
        else:  # one group
            full, windowed = plan.full[0], plan.windowed[0]
            if self._layer_types:
                masks = {t: self._mask(windowed if t == "sliding_attention" else full, device, self._additive)
                         for t in self._layer_types}
            else:
                masks = self._mask(full if windowed is None else windowed, device, self._additive)
        config = self.model.config
        attention = config._attn_implementation
        if self._packed:
            config._attn_implementation = PACKED_ATTENTION
        try:
            out = self._decoder(input_ids=torch.tensor([tokens], device=device), attention_mask=masks,
                                position_ids=positions.unsqueeze(0).to(device), use_cache=True,
                                **{self._cache_arg: columns.cache})
        finally:
            config._attn_implementation = attention
        return out.last_hidden_state[0, torch.tensor(keep, device=device)]

    def _mask(self, allowed: torch.Tensor, device, additive: bool) -> torch.Tensor:
        """``allowed`` as a 4-D mask: boolean, or ``additive`` (SDPA turns a boolean mask into one on every call:
        once per pass for ``packed_sdpa``, -inf as SDPA's own; the smallest finite value for eager attention)."""
        mask = allowed[None, None].to(device)
        if not additive:
            return mask
        dtype = self.model.dtype
        fill = float("-inf") if self._packed else torch.finfo(dtype).min
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, fill)


class _Lookup:
    """Lookup drafts for one answer: an index of the ``LOOKUP_NGRAM``-token n-grams of its prompt and answer so
    far, each to where its latest occurrence ended (followed by at least one token)."""

    def __init__(self, prompt: Sequence[int]):
        self.seq: list[int] = []
        self.after: dict[tuple, int] = {}
        self.answered = 0  # answer tokens in ``seq``
        self._extend(prompt)

    def _extend(self, tokens: Sequence[int]) -> None:
        n = LOOKUP_NGRAM
        for token in tokens:
            if len(self.seq) >= n:
                self.after[tuple(self.seq[-n:])] = len(self.seq)
            self.seq.append(token)

    def draft(self, answer: Sequence[int], pending: Sequence[int], limit: int) -> list[int]:
        """Up to ``limit`` tokens expected after ``answer`` (the tokens chosen so far) and ``pending`` (forced
        tokens not chosen yet): what followed the latest earlier occurrence of their last n-gram."""
        self._extend(answer[self.answered:])
        self.answered = len(answer)
        key = tuple((self.seq[-LOOKUP_NGRAM:] + list(pending))[-LOOKUP_NGRAM:])
        end = self.after.get(key)
        return [] if end is None else self.seq[end:end + limit]


class _Head:
    """The model's output layer: whole rows of logits, or (``rows``) the logits of a few tokens from its weight rows
    of them, when it is a plain ``nn.Linear`` without hooks (``weight`` is ``None`` otherwise)."""

    def __init__(self, module):
        self.module = module
        plain = type(module) is torch.nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)
        self.weight = module.weight if plain else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.module(hidden).float()

    def rows(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of ``tokens`` only, for one hidden state."""
        tokens = tokens.to(self.weight.device)
        scores = self.weight.index_select(0, tokens) @ hidden
        if self.module.bias is not None:
            scores += self.module.bias[tokens]
        return scores.float().cpu()


@dataclass
class _Plan:
    """How one pass's tokens meet the attention groups (lists indexed by group)."""

    queries: list  # (start, end): the tokens of the pass that attend in the group
    writes: list  # [(start, end), ...]: the tokens of the pass whose keys and values the group stores
    full: list  # which of the group's columns each of its attending tokens sees ([tokens, columns]; None: none attend;
    # ``GreedyLoop._forward`` turns them into packed_sdpa's 4-D additive masks)
    windowed: list  # the same within the sliding window (None without one)


class _Columns:
    """The packed key/value cache: for each attention group, one row of columns, each with the owner id of the answer
    or prefix it belongs to (-1: a hole) and its position. ``packed``: the layers hand themselves to
    :func:`packed_sdpa` (else, with one group, the group's keys and values to the model's own attention)."""

    def __init__(self, groups: int, packed: bool):
        self.owner = [torch.zeros(0, dtype=torch.long) for _ in range(groups)]
        self.position = [torch.zeros(0, dtype=torch.long) for _ in range(groups)]
        self.packed = packed
        self.plan: Optional[_Plan] = None
        self.cache = Cache(layer_class_to_replicate=partial(_ColumnLayer, self))

    def append(self, segments: list, positions: torch.Tensor, window) -> _Plan:
        """Add the columns of a pass's ``segments`` (see ``GreedyLoop.run``; ``positions``: of each token) and
        return (and keep, for the layers) the pass's plan. Every group stores the shared prefixes' columns; the
        prefixes' tokens attend in group 0, each answer's in its own group. A token sees the columns of its own
        answer and of its prefix, not later than itself (and, for a sliding ``window``, within the window)."""
        owners = torch.cat([torch.full((len(s[3]),), s[0], dtype=torch.long) for s in segments])
        sees = torch.cat([torch.full((len(s[3]),), s[1], dtype=torch.long) for s in segments])
        shared = sum(len(s[3]) for s in segments if s[4] is None)
        bounds, start = {}, 0  # each group's tokens: [first, end) of the pass
        for s in segments:
            if s[4] is not None:
                bounds.setdefault(s[4], [start, start])[1] = start + len(s[3])
            start += len(s[3])
        plan = _Plan([], [], [], [])
        for g in range(len(self.owner)):
            first, end = bounds.get(g, (0, 0))
            if g == 0:  # the prefixes' tokens attend here
                first, end = 0, max(end, shared)
            writes = ([(0, shared)] if shared and g else []) + ([(first, end)] if first < end else [])
            new = torch.cat([torch.arange(a, b) for a, b in writes]) if writes else torch.zeros(0, dtype=torch.long)
            old = len(self.owner[g])
            self.owner[g] = torch.cat([self.owner[g], owners[new]])
            self.position[g] = torch.cat([self.position[g], positions[new]])
            attending = new[len(new) - (end - first):]
            plan.queries.append((first, end))
            plan.writes.append(writes)
            if not len(attending):
                plan.full.append(None)
                plan.windowed.append(None)
                continue
            owner = self.owner[g][None, :]
            columns = torch.arange(len(self.owner[g]))[None, :]
            rows = torch.arange(old + len(new) - len(attending), old + len(new))[:, None]
            allowed = ((owner == owners[attending][:, None]) | (owner == sees[attending][:, None])) & (columns <= rows)
            plan.full.append(allowed)
            plan.windowed.append(None if window is None else
                                 allowed & (positions[attending][:, None] - self.position[g][None, :] < window))
        self.plan = plan
        return plan

    def drop(self, owner: int) -> None:
        for owners in self.owner:
            owners[owners == owner] = -1

    def drop_tail(self, owner: int, group: int, count: int) -> None:
        """Make the last ``count`` columns of ``owner`` (in attention group ``group``) holes (rejected forced
        tokens)."""
        if count:
            owners = self.owner[group]
            owners[(owners == owner).nonzero().squeeze(1)[-count:]] = -1

    def compact(self) -> None:
        """Drop a group's holes once they are ``MAX_HOLES`` of its columns."""
        for g, owners in enumerate(self.owner):
            live = owners >= 0
            if len(owners) - int(live.sum()) < MAX_HOLES * len(owners):
                continue
            index = live.nonzero().squeeze(1)
            self.owner[g], self.position[g] = owners[index], self.position[g][index]
            for layer in self.cache.layers:
                layer.keep(g, index)


class _ColumnLayer(DynamicLayer):
    """One layer's keys and values: for each attention group, a buffer that grows by doubling. ``update`` writes the
    pass's new columns in place, where the plan says (no copy of the whole cache per pass)."""

    def __init__(self, columns: _Columns):
        super().__init__()
        self.columns = columns
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.lengths = [0] * len(columns.owner)

    def update(self, key_states, value_states, *args, **kwargs):
        for g, writes in enumerate(self.columns.plan.writes):
            for a, b in writes:
                self._write(g, key_states[..., a:b, :], value_states[..., a:b, :])
        self.is_initialized = True
        if self.columns.packed:
            return self, self
        self.keys, self.values = self.group(0)
        return self.keys, self.values

    def _write(self, g: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        length, new = self.lengths[g], keys.shape[-2]
        old = self.buffers.get(g)
        if old is None or length + new > old[0].shape[-2]:
            capacity = max(2 * (length + new), 256)
            self.buffers[g] = tuple(s.new_empty((*s.shape[:-2], capacity, s.shape[-1])) for s in (keys, values))
            if old is not None:
                for buffer, previous in zip(self.buffers[g], old):
                    buffer[..., :length, :] = previous[..., :length, :]
        for buffer, states in zip(self.buffers[g], (keys, values)):
            buffer[..., length:length + new, :] = states
        self.lengths[g] = length + new

    def group(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of attention group ``g``'s columns (views)."""
        return tuple(b[..., :self.lengths[g], :] for b in self.buffers[g])

    def keep(self, g: int, index: torch.Tensor) -> None:
        """Keep only the columns ``index`` (in that order) of group ``g``."""
        if g not in self.buffers:
            return
        index = index.to(self.buffers[g][0].device)
        for buffer in self.buffers[g]:
            buffer[..., :len(index), :] = buffer.index_select(-2, index)
        self.lengths[g] = len(index)

    def get_seq_length(self) -> int:
        return max(self.lengths)
