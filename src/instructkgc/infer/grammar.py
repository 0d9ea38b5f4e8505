"""Answer grammars as EBNF text, with span grounding: extractive strings can only be spans of the input.

The answer JSON Schemas (``Task.answer_schema``) mark every string that names something in the text (entities,
heads / tails, triggers, arguments) with ``"x-span": true``. With grounding on, :func:`answer_grammar` writes
the schema as xgrammar EBNF in which such a string accepts exactly the spans of the record's input text, JSON
escaped the way ``json.dumps(..., ensure_ascii=False)`` writes them; every other part of the answer (fixed
keys, ``"NAN"``, free strings such as KG attribute values) is as in xgrammar's own JSON-schema grammar, with
``json.dumps`` spacing. The same text serves the HF engine (``GrammarCache``) and vLLM
(``StructuredOutputsParams(grammar=...)``).

Spans are contiguous runs of *units* of the text that neither start nor end with white space; a unit is a run
of letters / digits (one character for CJK scripts, which have no spaces), one white-space run or one other
character. So ``"Obama"`` and ``"Obama , who"`` are spans of ``"Obama , who"`` but ``"bam"`` is not. The spans
are the paths of the suffix automaton of the unit sequence (at most ``2n`` states for ``n`` units), written as
one EBNF rule per state.
"""
from __future__ import annotations

import json
import re
from typing import Optional

from ie2instruction.tasks.base import SPAN_KEY

# How every answer grammar is built from a JSON schema, for both engines: no free whitespace, no extra keys.
JSON_GRAMMAR_OPTIONS = {"any_whitespace": False, "strict_mode": True}
SPAN_TEXT = "x-span-text"  # top-level schema keyword carrying the record's input text (set by records.py)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_UNITS = re.compile(rf"\s+|[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|.", re.S)


def span_units(text: str) -> list[str]:
    """The text cut into the units spans are made of (their concatenation is ``text``)."""
    return _UNITS.findall(text)


def is_span(value: str, text: str) -> bool:
    """Whether ``value`` is a span of ``text`` in the sense of the grounded grammar."""
    units, want = span_units(text), span_units(value)
    if not want or want[0].isspace() or want[-1].isspace():
        return False
    n = len(want)
    return any(units[i:i + n] == want for i in range(len(units) - n + 1))


def has_spans(schema) -> bool:
    if isinstance(schema, dict):
        return schema.get(SPAN_KEY) is True or any(has_spans(v) for v in schema.values())
    if isinstance(schema, list):
        return any(has_spans(v) for v in schema)
    return False


def _literal(s: str) -> str:
    """An EBNF string literal matching the UTF-8 of ``s``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_literal(s: str) -> str:
    """An EBNF literal matching ``s`` as it appears inside a JSON string (without the quotes)."""
    return _literal(json.dumps(s, ensure_ascii=False)[1:-1])


def _suffix_automaton(seq: list[int]) -> tuple[list[dict[int, int]], list[int]]:
    """Transitions and, per state, the last symbol of its strings (-1 for the initial state)."""
    nxt: list[dict[int, int]] = [{}]
    link, length, last_sym = [-1], [0], [-1]
    last = 0
    for c in seq:
        cur = len(nxt)
        nxt.append({})
        link.append(-1)
        length.append(length[last] + 1)
        last_sym.append(c)
        p = last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                link.append(link[q])
                length.append(length[p] + 1)
                last_sym.append(c)
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        last = cur
    return nxt, last_sym


def span_rules(text: str, name: str = "span") -> list[str]:
    """EBNF rules; ``name`` matches a JSON string (with its quotes) whose value is a span of ``text``."""
    units = span_units(text)
    ids: dict[str, int] = {}
    seq = [ids.setdefault(u, len(ids)) for u in units]
    symbols = list(ids)
    spaces = {i for i, u in enumerate(symbols) if u.isspace()}
    nxt, last_sym = _suffix_automaton(seq)
    literals = [_json_literal(u) for u in symbols]
    can_end = [bool(state) and last_sym[state] not in spaces for state in range(len(nxt))]
    live = list(can_end)  # states from which a span can still end (not only trailing white space ahead)
    changed = True
    while changed:
        changed = False
        for state, moves in enumerate(nxt):
            if not live[state] and any(live[t] for t in moves.values()):
                live[state] = changed = True
    rules = []
    for state, moves in enumerate(nxt):
        if state and not live[state]:
            continue  # unreachable below: no move leads here
        options = []
        if can_end[state]:
            options.append('"\\""')  # a span may end here: close the string
        for sym, target in sorted(moves.items()):
            if (state == 0 and sym in spaces) or not live[target]:
                continue  # a span does not start with white space, nor go where it cannot end
            options.append(f"({literals[sym]} {name}_{target})")
        # no option at all: the initial state of a text without a span; only the empty string is left
        rules.append(f"{name}_{state} ::= " + (" | ".join(options) if options else '"\\""'))
    return [f'{name} ::= "\\"" {name}_0'] + rules


class _Writer:
    """EBNF of the JSON Schema subset the task answer schemas use when they contain spans."""

    def __init__(self, text: str):
        self.rules: list[str] = []
        self.count = 0
        self.text = text
        self.span_used = False

    def rule(self, body: str) -> str:
        name = f"r{self.count}"
        self.count += 1
        self.rules.append(f"{name} ::= {body}")
        return name

    def value(self, schema: dict) -> str:
        if schema.get(SPAN_KEY) is True:
            self.span_used = True
            return "span"
        if "const" in schema:
            return _literal(json.dumps(schema["const"], ensure_ascii=False))
        if "anyOf" in schema:
            return self.rule(" | ".join(f"({self.value(s)})" for s in schema["anyOf"]))
        kind = schema.get("type")
        if kind == "array":
            item = self.value(schema["items"])
            most = schema.get("maxItems")
            more = "*" if most is None else f"{{0, {most - 1}}}"
            return self.rule(f'("[" {item} (", " {item}){more} "]") | "[]"')
        if kind == "object" and schema.get("additionalProperties") is False:
            props = schema.get("properties", {})
            if set(schema.get("required", [])) != set(props):
                raise ValueError("grounded grammar: objects with optional properties are not supported")
            if not props:
                return '"{}"'
            parts = [f"{_literal(json.dumps(k, ensure_ascii=False) + ': ')} {self.value(v)}" for k, v in props.items()]
            return self.rule('"{" ' + ' ", " '.join(parts) + ' "}"')
        raise ValueError(f"grounded grammar: unsupported schema {json.dumps(schema)[:80]}")


def answer_grammar(schema: dict, text: Optional[str] = None, grounded: bool = True) -> str:
    """EBNF (xgrammar syntax, root rule ``root``) of the answers ``schema`` allows.

    With ``grounded`` and ``text`` (default: the schema's ``x-span-text``), strings marked ``x-span`` accept
    only spans of ``text``; otherwise (or when the schema marks none) this is xgrammar's JSON-schema grammar.
    """
    schema = dict(schema)
    embedded = schema.pop(SPAN_TEXT, None)
    text = embedded if text is None else text
    if not grounded or text is None or not has_spans(schema):
        import xgrammar

        return str(xgrammar.Grammar.from_json_schema(json.dumps(schema, ensure_ascii=False), **JSON_GRAMMAR_OPTIONS))
    writer = _Writer(text)
    root = writer.value(schema)
    lines = [f"root ::= {root}"] + writer.rules
    if writer.span_used:
        lines += span_rules(text)
    return "\n".join(lines) + "\n"
