"""Ground a task's parsed tuples in the document: typed items (``ie2instruction.tasks.items``) with document
character offsets.

A span is *grounded* when it occurs in the window the model read: exactly, else ignoring case, else ignoring
case and differences in whitespace (the item then carries the document's own spelling); the span records which
(``grounding``: exact / case-folded / fuzzy). Offsets are document offsets, ``text[start:end] == span``. A span
of a pair (relation tail, event argument, attribute value) takes the occurrence nearest its anchor (head,
trigger, entity). Ungrounded spans are dropped and counted unless ``keep`` is set; kept ones have ``null``
offsets and ``grounding: "ungrounded"``. Which tuples a task has and which items they become is the task's
business (``Task.extract_tuples`` / ``Task.make_items``).
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Optional

from ie2instruction.tasks import Task
from ie2instruction.tasks.items import Event, Item, Span

Window = tuple[int, int]


def _fuzzy(span: str) -> Optional[re.Pattern]:
    words = span.split()
    if not words:
        return None
    return re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)


class Grounder:
    """Finds spans in one window ``[lo, hi)`` of a document."""

    def __init__(self, text: str, window: Window):
        self.text = text
        self.lo, self.hi = window
        self._cache: dict[str, tuple[list[Window], str]] = {}
        self._folded: Optional[str] = None

    def occurrences(self, span: str) -> tuple[list[Window], str]:
        """Where ``span`` occurs in the window and how it was matched (``ungrounded``: nowhere)."""
        hit = self._cache.get(span)
        if hit is not None:
            return hit
        out: list[Window] = []
        status = "ungrounded"
        if span and span.strip():
            out, status = self._find(self.text, span), "exact"
            if not out and len(span.casefold()) == len(span):  # (a fold that changes lengths: fuzzy below)
                if self._folded is None:
                    folded = self.text.casefold()
                    self._folded = folded if len(folded) == len(self.text) else ""
                out, status = self._find(self._folded, span.casefold()), "case-folded"
            if not out:
                pattern = _fuzzy(span)
                out = [m.span() for m in pattern.finditer(self.text, self.lo, self.hi)] if pattern else []
                status = "fuzzy"
            if not out:
                status = "ungrounded"
        self._cache[span] = out, status
        return out, status

    def _find(self, text: str, span: str) -> list[Window]:
        out = []
        i = text.find(span, self.lo, self.hi)
        while i >= 0:
            out.append((i, i + len(span)))
            i = text.find(span, i + 1, self.hi)
        return out

    def locate(self, span: str, label: str = "", near: Optional[int] = None) -> Span:
        """The first occurrence (or the one nearest ``near``) as a :class:`Span`; ungrounded when none."""
        spans, status = self.occurrences(span)
        if not spans:
            return Span(span, label)
        s, e = spans[0] if near is None else min(spans, key=lambda w: abs(w[0] - near))
        return Span(self.text[s:e], label, s, e, status)


class GroundStats:
    def __init__(self):
        self.ungrounded = 0


def drop_ungrounded(item: Item, stats: GroundStats) -> Optional[Item]:
    """The item without its ungrounded spans (each counted), or None when nothing of it is left: an entity,
    relation or record needs all its spans; an event loses an ungrounded trigger or argument and survives
    while it has a trigger or an argument."""
    if isinstance(item, Event):
        trigger = item.trigger
        if trigger is not None and not trigger.grounded:
            stats.ungrounded += 1
            trigger = None
        args = [a for a in item.arguments if a.grounded]
        stats.ungrounded += len(item.arguments) - len(args)
        return replace(item, trigger=trigger, arguments=args) if trigger is not None or args else None
    if all(s.grounded for _, s in item.spans()):
        return item
    stats.ungrounded += 1
    return None


def ground(task: Task, tuples: list[tuple], text: str, window: Window, keep: bool,
           stats: GroundStats) -> list[Item]:
    """Typed items for the tuples one window's answer gave (see the module docstring)."""
    g = Grounder(text, window)
    items = task.make_items(tuples, g.locate)
    if not keep:
        items = [x for x in (drop_ungrounded(i, stats) for i in items) if x is not None]
    return [i for i in items if not (isinstance(i, Event) and i.trigger is None and not i.arguments)]
