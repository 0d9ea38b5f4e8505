"""Merge the items of all windows and schema chunks of one document, without duplicates.

Two items are the same when they agree on everything but offsets (``item.key()``; for events: type and
trigger, and the arguments of equal events are united). The earliest occurrence in the document gives the
offsets. The result is ordered by document position; items without offsets come last, in the order they were
found.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from ie2instruction.tasks.items import Event, Item, Span, position


def _start(s: Span) -> float:
    return s.start if s.start is not None else float("inf")


def _merge_arguments(into: list[Span], more: list[Span]) -> list[Span]:
    index = {(a.text, a.label): n for n, a in enumerate(into)}
    out = list(into)
    for a in more:
        n = index.get((a.text, a.label))
        if n is None:
            index[(a.text, a.label)] = len(out)
            out.append(a)
        elif _start(a) < _start(out[n]):
            out[n] = a
    return sorted(out, key=lambda a: (a.start is None, a.start or 0))


def merge_items(items: Iterable[Item]) -> list[Item]:
    """Deduplicated items in document order (see the module docstring)."""
    kept: dict[tuple, Item] = {}
    for item in items:
        key = item.key()
        old = kept.get(key)
        if old is None:
            kept[key] = item
            continue
        first = item if position(item) < position(old) else old
        if isinstance(item, Event):
            first = replace(first, arguments=_merge_arguments(old.arguments, item.arguments))
        kept[key] = first
    out = list(kept.values())
    out.sort(key=position)  # stable: ties and unplaced items keep the order they were found in
    return out
