"""Turn a task's parsed tuples into result items with document character offsets (grounding).

A span is *grounded* when it occurs in the window the model read: exactly, or else ignoring case and
differences in whitespace (the item then carries the document's own spelling). Offsets are document
offsets, ``text[start:end] == span``. A span of a pair (relation tail, event argument, attribute value) takes
the occurrence nearest its anchor (head, trigger, entity). Ungrounded spans are dropped and counted unless
``keep`` is set; kept ones have ``null`` offsets.

Result items, by task (the result field of an output line in brackets):

* NER (``entities``): ``{"text", "type", "start", "end"}``
* RE / SPO (``relations``): ``{"head", "head_start", "head_end", "relation", "tail", "tail_start",
  "tail_end"}``; SPO adds ``"head_type"`` and ``"tail_type"``
* EE / EEA / EET (``events``): ``{"type", "trigger", "start", "end", "arguments": [{"text", "role", "start",
  "end"}]}``; the trigger is ``null`` when the model gave none (``NAN``); EET events have no arguments
* KG (``records``): ``{"entity", "type", "start", "end", "attribute", "value", "value_start", "value_end"}``
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from ie2instruction.tasks import NAN, Task

Span = tuple[int, int]

RESULT_FIELDS = {"NER": "entities", "RE": "relations", "SPO": "relations", "EE": "events", "EEA": "events",
                 "EET": "events", "KG": "records"}


def result_field(task_name: str) -> str:
    return RESULT_FIELDS[task_name]


def typed_tuples(task: Task, answer: Any, chunk: list) -> Optional[list[tuple]]:
    """``task.parse`` of one answer; for KG each tuple gets its entity type in front (``(type, entity,
    attribute, value)``), which ``parse`` alone does not keep. None when the answer has the wrong shape."""
    if task.name != "KG":
        return task.parse(answer, schema=chunk)
    if not isinstance(answer, dict):
        return None
    out = []
    for etype, records in answer.items():
        out.extend((etype,) + t for t in task.parse({etype: records}, schema=chunk) or ())
    return out


def _fuzzy(span: str) -> Optional[re.Pattern]:
    words = span.split()
    if not words:
        return None
    return re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)


class Grounder:
    """Finds spans in one window ``[lo, hi)`` of a document."""

    def __init__(self, text: str, window: Span):
        self.text = text
        self.lo, self.hi = window
        self._cache: dict[str, list[Span]] = {}

    def occurrences(self, span: str) -> list[Span]:
        hit = self._cache.get(span)
        if hit is not None:
            return hit
        out: list[Span] = []
        if span and span.strip():
            i = self.text.find(span, self.lo, self.hi)
            while i >= 0:
                out.append((i, i + len(span)))
                i = self.text.find(span, i + 1, self.hi)
            if not out:
                pattern = _fuzzy(span)
                if pattern is not None:
                    out = [m.span() for m in pattern.finditer(self.text, self.lo, self.hi)]
        self._cache[span] = out
        return out

    def locate(self, span: str, near: Optional[int] = None) -> Optional[Span]:
        """The first occurrence (or the one nearest ``near``), or None when the span is not in the window."""
        spans = self.occurrences(span)
        if not spans:
            return None
        if near is None:
            return spans[0]
        return min(spans, key=lambda s: abs(s[0] - near))


@dataclass
class Located:
    text: str
    start: Optional[int]
    end: Optional[int]

    @property
    def grounded(self) -> bool:
        return self.start is not None


def _locate(g: Grounder, span: str, near: Optional[int] = None) -> Located:
    where = g.locate(span, near)
    if where is None:
        return Located(span, None, None)
    return Located(g.text[where[0]:where[1]], where[0], where[1])


class GroundStats:
    def __init__(self):
        self.ungrounded = 0


def ground(task_name: str, tuples: list[tuple], text: str, window: Span, keep: bool,
           stats: GroundStats) -> list[dict]:
    """Result items for the tuples one window's answer gave (see the module docstring)."""
    g = Grounder(text, window)
    return _GROUNDERS[task_name](tuples, g, keep, stats)


def _entities(tuples, g, keep, stats):
    out = []
    for entity, etype in tuples:
        loc = _locate(g, entity)
        if not loc.grounded and not keep:
            stats.ungrounded += 1
            continue
        out.append({"text": loc.text, "type": etype, "start": loc.start, "end": loc.end})
    return out


def _pair(g, keep, stats, first: str, second: str) -> Optional[tuple[Located, Located]]:
    a = _locate(g, first)
    b = _locate(g, second, a.start)
    if not (a.grounded and b.grounded) and not keep:
        stats.ungrounded += 1
        return None
    return a, b


def _relations(tuples, g, keep, stats):
    out = []
    for head, rel, tail in tuples:
        pair = _pair(g, keep, stats, head, tail)
        if pair:
            h, t = pair
            out.append({"head": h.text, "head_start": h.start, "head_end": h.end, "relation": rel,
                        "tail": t.text, "tail_start": t.start, "tail_end": t.end})
    return out


def _spo(tuples, g, keep, stats):
    out = []
    for s_type, subj, pred, o_type, obj in tuples:
        pair = _pair(g, keep, stats, subj, obj)
        if pair:
            h, t = pair
            out.append({"head": h.text, "head_type": s_type, "head_start": h.start, "head_end": h.end,
                        "relation": pred, "tail": t.text, "tail_type": o_type, "tail_start": t.start,
                        "tail_end": t.end})
    return out


def _event(g, keep, stats, etype: str, trigger: str, args) -> Optional[dict]:
    trig = Located("", None, None) if trigger in ("", NAN) else _locate(g, trigger)
    if trigger not in ("", NAN) and not trig.grounded and not keep:
        stats.ungrounded += 1
        trig = Located("", None, None)
    arguments = []
    for value, role in args:
        loc = _locate(g, value, trig.start)
        if not loc.grounded and not keep:
            stats.ungrounded += 1
            continue
        arguments.append({"text": loc.text, "role": role, "start": loc.start, "end": loc.end})
    if not trig.text and not arguments:
        return None
    return {"type": etype, "trigger": trig.text or None, "start": trig.start, "end": trig.end,
            "arguments": arguments}


def _events(tuples, g, keep, stats):
    out = (_event(g, keep, stats, etype, trigger, args) for etype, trigger, args in tuples)
    return [e for e in out if e is not None]


def _triggers(tuples, g, keep, stats):
    out = (_event(g, keep, stats, etype, trigger, ()) for trigger, etype in tuples)
    return [e for e in out if e is not None]


def _records(tuples, g, keep, stats):
    out = []
    for etype, entity, attr, value in tuples:
        pair = _pair(g, keep, stats, entity, value)
        if pair:
            e, v = pair
            out.append({"entity": e.text, "type": etype, "start": e.start, "end": e.end, "attribute": attr,
                        "value": v.text, "value_start": v.start, "value_end": v.end})
    return out


_GROUNDERS = {"NER": _entities, "RE": _relations, "SPO": _spo, "EE": _events, "EEA": _events,
              "EET": _triggers, "KG": _records}
