"""Turn a model's output string into a JSON value, strictly (the original's ``json.loads``) or with repair.

:func:`load_answer` never raises: an answer that cannot be read gives :data:`INVALID`, which the evaluation
counts as an error (``错误数``).
"""
from __future__ import annotations

import json
import json.scanner
import re
from typing import Any

INVALID: Any = type("Invalid", (), {"__repr__": lambda self: "INVALID", "__bool__": lambda self: False})()
"""Returned when an answer is not (and could not be made) valid JSON. Distinct from a JSON ``null``."""

MAX_REPAIR_CHARS = 20_000
"""Longer answers are not repaired (counted as errors): ``json_repair`` is pure Python (about 2 µs a
character), and a runaway generation that long is not an answer."""

MAX_REPAIR_DEPTH = 50
"""Answers nest 2 to 4 levels; deeper brackets are noise that ``json_repair`` is slow on."""

_BRACKETS = re.compile(r"[\[\]{}]")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.S)


_TOO_DEEP: Any = type("TooDeep", (), {"__bool__": lambda self: False})()


_scan = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner behind json.loads, without its wrappers
_WS = re.compile(r"[ \t\n\r]*")


def _strict(text: str) -> Any:
    """Exactly ``json.loads(text)`` (whitespace allowed around one value), INVALID where it would raise."""
    try:
        value, end = _scan(text, _WS.match(text).end())
    except (StopIteration, ValueError):  # nothing decodable at the start / JSONDecodeError
        return INVALID
    except RecursionError:  # nesting deeper than the interpreter allows: no answer, and not worth repairing
        return _TOO_DEEP
    return value if _WS.match(text, end).end() == len(text) else INVALID


def load_answer(text: str, repair: bool = False) -> tuple[Any, bool]:
    """Return ``(value, repaired)`` for one output string.

    Strict mode is ``json.loads`` exactly as the original did it (leading and trailing whitespace allowed).
    With ``repair=True`` an answer that is not valid JSON is recovered when possible: markdown code fences are
    stripped, the outermost ``{...}`` is taken out of surrounding prose, and the rest (truncation, single quotes,
    trailing commas, ...) is left to the ``json-repair`` library. ``repaired`` tells whether that was needed.
    """
    if type(text) is not str:
        return INVALID, False
    value = _strict(text)
    if value is _TOO_DEEP:
        return INVALID, False
    if value is not INVALID or not repair:
        return value, False
    value = _repair(text)
    return value, value is not INVALID


def extract_candidate(text: str) -> str:
    """The part of ``text`` that most likely holds the answer: a fenced block's body, then the outermost object."""
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    start = text.find("{")
    if start < 0:
        return text.strip()
    end = text.rfind("}")
    return text[start:end + 1] if end > start else text[start:]


def _repair(text: str) -> Any:
    if len(text) > MAX_REPAIR_CHARS:
        return INVALID
    candidate = extract_candidate(text)
    if not candidate:
        return INVALID
    value = _strict(candidate)
    if value is _TOO_DEEP:
        return INVALID
    if value is not INVALID:
        return value
    if _depth(candidate) > MAX_REPAIR_DEPTH:
        return INVALID
    try:
        import json_repair
    except ImportError:  # pragma: no cover - a dependency in requirements.txt
        return INVALID
    try:
        value = json_repair.loads(candidate)
    except Exception:  # the library must not take the evaluation down (RecursionError included)
        return INVALID
    # json_repair answers "" for text with nothing JSON-like in it
    return INVALID if type(value) is str and not value else value


def _depth(text: str) -> int:
    """Bracket nesting depth, brackets inside strings included (an upper bound is all that is needed)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif depth:
            depth -= 1
    return deepest
