"""Split a long document into windows that fit the model's prompt budget, by sentences where possible.

A document is cut into *units*: sentences (ending in ``。！？!?`` or ``.`` before whitespace, plus closing
quotes and brackets, or at a line break), each with the whitespace after it, so the units tile the text.
A unit costing more tokens than a window allows is cut into pieces by token count (at a space where one is
near). Windows pack whole units greedily; consecutive windows share the last units of the previous window
worth up to ``overlap`` tokens, so a span cut at a piece boundary appears whole in one of the two windows.
Every character of the document lies in some window: nothing is truncated.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Optional

Span = tuple[int, int]

_SENTENCE_END = re.compile(
    r"""[。！？!?]+[”’"'」』）)\]]*"""  # CJK and ASCII terminators (repeats like ?! or 。。 kept together)
    r"""|\.+[”’"'」』）)\]]*(?=\s|$)"""  # a period only before whitespace or the end (3.14, e.g. U.S. stay)
    r"""|\n"""
)


def sentence_spans(text: str) -> list[Span]:
    """Spans tiling ``text``: each sentence with the whitespace that follows it (the first span also takes
    any leading whitespace)."""
    spans, start, n = [], 0, len(text)
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        while end < n and text[end].isspace():
            end += 1
        if end > start:
            spans.append((start, end))
            start = end
    if start < n:
        spans.append((start, n))
    return spans


def _cut_piece(text: str, start: int, end: int, budget: int, count: Callable[[str], int]) -> int:
    """The end of the longest prefix of ``text[start:end]`` costing at most ``budget`` tokens (at least one
    character), moved back to just after a space when one lies in the prefix's second half."""
    lo, hi = start + 1, end
    while lo < hi:  # largest cut with count <= budget
        mid = (lo + hi + 1) // 2
        if count(text[start:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    cut = lo
    if cut < end:
        space = max(text.rfind(" ", start, cut), text.rfind("\t", start, cut))
        if space >= 0 and space + 1 - start > (cut - start) // 2:
            cut = space + 1
    return cut


def units(text: str, budget: int, count: Callable[[str], int], piece: Optional[int] = None) -> list[Span]:
    """Sentence spans; any costing more than ``budget`` is cut into pieces of at most ``piece`` tokens."""
    piece = min(piece or budget, budget)
    out: list[Span] = []
    for s, e in sentence_spans(text):
        if count(text[s:e]) <= budget:
            out.append((s, e))
            continue
        while s < e:
            cut = _cut_piece(text, s, e, piece, count)
            out.append((s, cut))
            s = cut
    return out


def _trim(text: str, s: int, e: int) -> Span:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def plan_windows(text: str, budget: int, count: Callable[[str], int], overlap: int = 0,
                 fits: Optional[Callable[[str], bool]] = None) -> list[Span]:
    """Windows ``(start, end)`` over ``text`` (whitespace trimmed) whose text costs at most ``budget`` tokens.

    ``count`` gives the token cost of a piece of text; units are costed once and summed, and ``fits``, when
    given, is the exact check of a whole window (a window failing it loses its last unit, or a lone unit is
    halved). ``overlap`` is capped at half the budget. A text of only whitespace has no window.
    """
    if budget < 1:
        raise ValueError("the window budget must be at least one token")
    overlap = max(0, min(overlap, budget // 2))
    count = functools.lru_cache(maxsize=1 << 14)(count)  # units are costed once, not again when packed
    spans = units(text, budget, count, piece=overlap or None)
    costs = [count(text[s:e]) for s, e in spans]
    windows: list[Span] = []
    i, n = 0, len(spans)
    while i < n:
        j, total = i, costs[i]
        while j + 1 < n and total + costs[j + 1] <= budget:
            j += 1
            total += costs[j]
        while True:
            s, e = _trim(text, spans[i][0], spans[j][1])
            if fits is None or s == e or fits(text[s:e]):
                break
            if j > i:
                j -= 1
                continue
            a, b = spans[i]
            if b - a < 2:  # a single character that does not fit: the caller's budget is wrong
                raise ValueError("a single character does not fit the prompt budget")
            mid = a + (b - a) // 2
            spans[i:i + 1] = [(a, mid), (mid, b)]
            costs[i:i + 1] = [count(text[a:mid]), count(text[mid:b])]
            n += 1
        if s < e:
            windows.append((s, e))
        if j + 1 >= n:
            break
        k, shared = j + 1, 0
        while k - 1 > i and shared + costs[k - 1] <= overlap:
            k -= 1
            shared += costs[k]
        i = k
    return windows
