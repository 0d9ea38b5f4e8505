"""Typed extraction items: what ``instructkgc extract`` finds in a document, with document character offsets.

A :class:`Span` is one piece of the document the model named (an entity, a relation end, an event trigger or
argument, an attribute value): its text, its label (entity type, role, ...), its offsets
(``text[start:end] == span.text``) and how it was found (:data:`GROUNDING`):

* ``exact``: the model's string occurs verbatim;
* ``case-folded``: it occurs ignoring case;
* ``fuzzy``: it occurs ignoring case and differences in whitespace (the span carries the document's spelling);
* ``ungrounded``: not found in the text the model read (offsets ``None``; kept only with ``--keep_ungrounded``).

The four item kinds (:class:`Entity`, :class:`Relation`, :class:`Event`, :class:`Record`) are what merging,
entity resolution, every graph exporter and the HTML report consume. ``to_json`` gives the result-line format
documented in the README; ``item_from_json`` reads it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

GROUNDING = ("exact", "case-folded", "fuzzy", "ungrounded")


@dataclass(frozen=True)
class Span:
    text: str
    label: str = ""
    start: Optional[int] = None
    end: Optional[int] = None
    status: str = "ungrounded"

    @property
    def grounded(self) -> bool:
        return self.start is not None


@dataclass
class Entity:
    """NER: one typed mention."""

    span: Span

    def key(self) -> tuple:
        return ("entity", self.span.text, self.span.label)

    def spans(self) -> Iterator[tuple[str, Span]]:
        yield "entity", self.span

    def entities(self) -> Iterator[Span]:
        """The spans that are entities of the graph (mentions a document makes)."""
        yield self.span

    def to_json(self) -> dict:
        s = self.span
        return {"text": s.text, "type": s.label, "start": s.start, "end": s.end, "grounding": s.status}


@dataclass
class Relation:
    """RE / SPO: ``head --relation--> tail``; the ends' labels are their types (SPO) or ``""`` (RE)."""

    head: Span
    relation: str
    tail: Span
    typed: bool = False  # SPO: the ends carry types

    def key(self) -> tuple:
        return ("relation", self.head.text, self.head.label, self.relation, self.tail.text, self.tail.label)

    def spans(self) -> Iterator[tuple[str, Span]]:
        yield f"head of {self.relation}", self.head
        yield f"tail of {self.relation}", self.tail

    def entities(self) -> Iterator[Span]:
        yield self.head
        yield self.tail

    def to_json(self) -> dict:
        h, t = self.head, self.tail
        out = {"head": h.text, "head_start": h.start, "head_end": h.end, "relation": self.relation,
               "tail": t.text, "tail_start": t.start, "tail_end": t.end}
        if self.typed:
            out = {"head": h.text, "head_type": h.label, "head_start": h.start, "head_end": h.end,
                   "relation": self.relation, "tail": t.text, "tail_type": t.label, "tail_start": t.start,
                   "tail_end": t.end}
        out.update(head_grounding=h.status, tail_grounding=t.status)
        return out


@dataclass
class Event:
    """EE / EEA / EET: an event type, its trigger (``None`` when the model gave none) and arguments (each a
    span labelled by its role; argument entities have no type)."""

    type: str
    trigger: Optional[Span]
    arguments: list[Span] = field(default_factory=list)

    def key(self) -> tuple:
        if self.trigger is None:  # no trigger: only identical argument sets are the same event
            return ("event", "", self.type, tuple(sorted((a.text, a.label) for a in self.arguments)))
        return ("event", self.type, self.trigger.text)

    def spans(self) -> Iterator[tuple[str, Span]]:
        if self.trigger is not None:
            yield f"trigger of {self.type}", self.trigger
        for a in self.arguments:
            yield f"{a.label} of {self.type}", a

    def entities(self) -> Iterator[Span]:
        for a in self.arguments:
            yield replace(a, label="")

    def to_json(self) -> dict:
        t = self.trigger
        return {"type": self.type, "trigger": t.text if t else None, "start": t.start if t else None,
                "end": t.end if t else None, "grounding": t.status if t else None,
                "arguments": [{"text": a.text, "role": a.label, "start": a.start, "end": a.end,
                               "grounding": a.status} for a in self.arguments]}


@dataclass
class Record:
    """KG: ``entity`` (labelled by its type) has ``attribute`` = ``value``."""

    entity: Span
    attribute: str
    value: Span

    def key(self) -> tuple:
        return ("record", self.entity.text, self.entity.label, self.attribute, self.value.text)

    def spans(self) -> Iterator[tuple[str, Span]]:
        yield "entity", self.entity
        yield f"{self.attribute} of {self.entity.text}", self.value

    def entities(self) -> Iterator[Span]:
        yield self.entity

    def to_json(self) -> dict:
        e, v = self.entity, self.value
        return {"entity": e.text, "type": e.label, "start": e.start, "end": e.end, "attribute": self.attribute,
                "value": v.text, "value_start": v.start, "value_end": v.end, "grounding": e.status,
                "value_grounding": v.status}


Item = Entity | Relation | Event | Record


def position(item: Item) -> float:
    """Where the item starts in the document (its first grounded span); unplaced items sort last."""
    starts = [s.start for _, s in item.spans() if s.start is not None]
    if isinstance(item, Event) and item.trigger is not None and item.trigger.start is not None:
        return item.trigger.start
    return min(starts) if starts else float("inf")


def _status(d: dict, key: str, start: Optional[int]) -> str:
    return d.get(key) or ("exact" if start is not None else "ungrounded")


def _span(d: dict, text: str, label: str, prefix: str = "", status_key: str = "grounding") -> Span:
    start, end = d.get(prefix + "start"), d.get(prefix + "end")
    return Span(d[text], label, start, end, _status(d, status_key, start))


def item_from_json(d: dict) -> Item:
    """The item of one result-line entry (any task's shape; offsets and grounding may be missing)."""
    if "arguments" in d:
        trig = d.get("trigger")
        trigger = None if trig is None else _span(d, "trigger", d["type"])
        args = [_span(a, "text", a["role"]) for a in d["arguments"]]
        return Event(d["type"], trigger, args)
    if "relation" in d and "head" in d:
        head = _span(d, "head", d.get("head_type", ""), "head_", "head_grounding")
        tail = _span(d, "tail", d.get("tail_type", ""), "tail_", "tail_grounding")
        return Relation(head, d["relation"], tail, typed="head_type" in d)
    if "attribute" in d:
        return Record(_span(d, "entity", d.get("type", "")), d["attribute"],
                      _span(d, "value", "", "value_", "value_grounding"))
    return Entity(_span(d, "text", d.get("type", "")))


@dataclass
class Result:
    """All a document gave: its id and text, the task and its result field, the items, and the rest of the
    result line (the input record's other fields, ``stats``)."""

    id: str
    text: str
    task: str
    field: str
    items: list[Item]
    extra: dict = field(default_factory=dict)  # the result line's other fields (input record, stats)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.extra.items() if k not in ("stats", self.field)}
        out.update(id=self.id, text=self.text, task=self.task)
        out[self.field] = [i.to_json() for i in self.items]
        if "stats" in self.extra:
            out["stats"] = self.extra["stats"]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Result":
        """A result line read back (``extract --format jsonl`` output); the result field is whichever of
        ``entities`` / ``relations`` / ``events`` / ``records`` it has."""
        name = next((k for k in RESULT_FIELDS if k in d), "entities")
        extra = {k: v for k, v in d.items() if k not in ("id", "text", "task", name)}
        return cls(str(d["id"]), d.get("text", ""), d.get("task", ""), name,
                   [item_from_json(x) for x in d.get(name, ())], extra)


RESULT_FIELDS = ("entities", "relations", "events", "records")
