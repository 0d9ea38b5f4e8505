"""What every task shares: the schema file, schema splitting, negative sampling, and the Task interface."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..io import TOO_DEEP, InputError, LabelError, text_problem
from .items import Span

NAN = "NAN"
Locate = Callable[[str, str, Optional[int]], Span]


@dataclass
class Schema:
    """The three lines of a schema file: label types, role (relation / attribute) names, type -> roles."""

    types: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    type_roles: dict[str, list[str]] = field(default_factory=dict)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def read_schema(path: str | Path) -> Schema:
    """Read a 3-line schema file (README: Converting IE data): types, roles, type -> roles/attributes. Lines past
    the third are ignored."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(path, None, f"cannot read the schema file: {err.strerror}") from None
    try:  # only \n ends a line: str.splitlines would also split inside a label holding U+2028 or U+0085
        lines = [line.rstrip("\r") for line in raw.decode("utf-8-sig").split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
    except UnicodeDecodeError:
        raise InputError(path, None, "the schema file is not UTF-8") from None
    if len(lines) < 3:
        raise InputError(path, len(lines) or None, f"a schema file has 3 JSON lines, found {len(lines)}")
    values = []
    for no, line in enumerate(lines[:3], 1):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(path, no, f"invalid JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise InputError(path, no, TOO_DEEP) from None
        problem = text_problem(values[-1], line)
        if problem:
            raise InputError(path, no, problem)
    for no in (1, 2):
        if not _is_str_list(values[no - 1]):
            raise InputError(path, no, "expected a JSON list of strings")
    mapping = values[2]
    if not isinstance(mapping, dict) or not all(_is_str_list(v) for v in mapping.values()):
        raise InputError(path, 3, "expected a JSON object mapping each type to a list of strings")
    return Schema(_unique(values[0]), _unique(values[1]), {k: _unique(v) for k, v in mapping.items()})


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def split_chunks(items: list, n: int) -> list[list]:
    """Split a schema list into instructions of at most ``n`` items (``--split_num``; -1: no split).

    Full chunks of ``n``; a remainder of at least ``max(1, n // 2)`` becomes its own chunk, a smaller one is
    added to the last chunk. An empty list gives one empty chunk.
    """
    if n == -1:
        return [list(items)]
    full = max(len(items) // n, 1) * n
    chunks = [items[i:i + n] for i in range(0, full, n)]
    rest = len(items) - full
    if rest >= max(1, n // 2):
        chunks.append(items[full:])
    elif rest > 0:
        chunks[-1] = chunks[-1] + items[full:]
    return chunks


class Sampler:
    """Negative sampling and schema ordering for training records, with its own seeded RNG.

    ``neg_schema`` (p): 0 asks only the positive labels; p > 0 adds Binomial(L, p) sampled negatives (all of them
    when p >= 1, without touching the RNG); p < 0 adds every negative. ``random_sort`` shuffles instead of sorting.
    ``hard_negatives`` switches to cluster mode (positives + their hard negatives + up to ``split_num`` others).
    """

    def __init__(self, neg_schema: float = 1.0, random_sort: bool = False, seed: int = 42,
                 hard_negatives: dict[str, list[str]] | None = None, split_num: int = 4):
        self.p = neg_schema
        self.random_sort = random_sort
        self.rng = random.Random(seed)
        self.hard = hard_negatives
        self.split_num = split_num

    @property
    def uses_rng(self) -> bool:
        return self.random_sort or self.hard is not None or 0 < self.p < 1

    def binomial(self, n: int, p: float) -> int:
        if p >= 1:
            return n
        rnd = self.rng.random
        return sum(rnd() < p for _ in range(n))

    def sample(self, pool: list, size_of: int, at_least_one: bool) -> list:
        """Keep Binomial(size_of, p) items of ``pool`` (all when p < 0 or p >= 1)."""
        if self.p < 0 or self.p >= 1:
            return pool
        k = self.binomial(size_of, self.p)
        if at_least_one:
            k = max(k, 1)
        return self.rng.sample(pool, k) if k < len(pool) else pool

    def select(self, positives: list[str], universe: list[str], size: int) -> list[str] | None:
        """The labels one training record asks about: positives plus negatives; None for no record."""
        if self.hard is not None:
            return self._cluster(positives, universe, size)
        if self.p == 0:
            return list(positives) or None
        pos = set(positives)
        negatives = sorted(u for u in universe if u not in pos)
        if self.p > 0 and self.p < 1:
            k = self.binomial(size, self.p)
            if not positives:
                k = max(k, 1)
            if k < len(negatives):
                negatives = self.rng.sample(negatives, k)
        return negatives + sorted(pos)

    def _cluster(self, positives: list[str], universe: list[str], size: int) -> list[str] | None:
        universe = sorted(set(universe))
        if len(universe) == 1:
            return universe
        if not positives:
            k = min(max(self.binomial(size, self.p / 2) if self.p > 0 else 0, 1), len(universe))
            return self.rng.sample(universe, k)
        chosen = set(positives)
        for label in positives:
            chosen.update(self.hard.get(label, ()))
        others = [u for u in universe if u not in chosen]
        k = min(len(others), self.split_num) if self.split_num > 0 else 0
        return sorted(chosen) + self.rng.sample(others, k)

    def order(self, items: list, key=None) -> list:
        """Code-point sort (by ``key``), or a seeded shuffle with ``--random_sort``."""
        if self.random_sort:
            items = list(items)
            self.rng.shuffle(items)
            return items
        return sorted(items, key=key)


class Task:
    """One IE task: everything task-specific lives in its subclass (one module per task).

    Conversion: ``check_labels`` -> ``train_schemas`` / ``test_schema`` -> ``render_output``.
    Evaluation: ``gold`` (tuples from a label list), ``parse`` (tuples from a decoded answer), ``label_of``.
    Constrained decoding: ``answer_schema`` (JSON Schema of the answer to one instruction).
    """

    name: str = ""
    label_field: str = ""
    metric: str = "triple"  # "triple": score tuples; "event": score events and arguments separately
    parse_uses_schema: bool = False  # parse() reads the instruction's schema chunk (evaluation decodes it per line)
    sentences: dict[str, str] = {}

    # ---- conversion -----------------------------------------------------------------------------------
    def instruction_sentence(self, language: str) -> str:
        return self.sentences[language]

    def check_labels(self, labels: Any) -> list:
        """Validate a raw label list (raise LabelError) and drop what the task de-duplicates."""
        if not isinstance(labels, list):
            raise LabelError(f"'{self.label_field}' must be a list, got {type(labels).__name__}")
        for i, item in enumerate(labels):
            problem = self.label_problem(item)
            if problem:
                raise LabelError(f"'{self.label_field}'[{i}]: {problem}")
        return self.dedup(labels)

    def label_problem(self, item: Any) -> str | None:
        """Why one label item has the wrong shape, or None."""
        return _require_str_fields(item, self.label_keys)

    label_keys: tuple[str, ...] = ()

    def dedup(self, labels: list) -> list:
        return labels

    def train_schemas(self, labels: list, schema: Schema, sampler: Sampler, split_num: int) -> list[list]:
        """The schema chunks of the training records for one input (each becomes one record)."""
        items = self.train_items(labels, schema, sampler)
        if items is None:
            return []
        return [self.schema_json(c) for c in self.split(items, split_num)]

    def test_schemas(self, labels: list | None, schema: Schema, split_num: int) -> list[list]:
        """The schema chunks of the test records for one input: the full schema, never sampled."""
        return [self.schema_json(c) for c in self.split(self.test_items(labels, schema), split_num)]

    def schema_key(self, labels: list | None, split: str):
        """A hashable key such that records with equal keys get equal schema chunks (None: no such key)."""
        return "" if split == "test" else None

    def split(self, items: list, n: int) -> list[list]:
        return split_chunks(items, n)

    def schema_json(self, items: list) -> list:
        """The ``schema`` list written into the instruction for a chunk of items."""
        return list(items)

    def universe(self, schema: Schema) -> list[str]:
        """The label strings negatives (and hard negatives) are drawn from."""
        return schema.types

    def train_items(self, labels: list, schema: Schema, sampler: Sampler) -> list | None:
        raise NotImplementedError

    def test_items(self, labels: list | None, schema: Schema) -> list:
        raise NotImplementedError

    def render_output(self, labels: list, schema_chunk: list, text: str, schema: Schema | None = None) -> dict:
        """The gold answer (a dict keyed by the chunk's labels, in order); ``schema`` is the whole schema."""
        raise NotImplementedError

    def schema_from_json(self, value: Any) -> Schema:
        """A schema given inline (``extract --schema``): a list of labels, or an object type -> roles."""
        if _is_str_list(value):
            return Schema(types=_unique(value))
        raise LabelError(f"{self.name}: expected a JSON list of label strings")

    # ---- evaluation -----------------------------------------------------------------------------------
    def gold(self, labels: Any) -> list[tuple]:
        raise NotImplementedError

    def parse(self, answer: Any, schema: list | None = None) -> list[tuple] | None:
        raise NotImplementedError

    def label_of(self, item: tuple) -> str:
        raise NotImplementedError

    def answer_schema(self, schema_chunk: list) -> dict:
        raise NotImplementedError

    # ---- extraction (``instructkgc extract``) ---------------------------------------------------------
    result_field: str = ""  # the result line's list of items
    extract_split_num: int = 4  # extract's default --split_num

    def extract_tuples(self, answer: Any, schema_chunk: list) -> list[tuple] | None:
        """The tuples of one answer that ``make_items`` turns into items (None: the wrong shape)."""
        return self.parse(answer, schema=schema_chunk)

    def make_items(self, tuples: list[tuple], locate: Locate) -> list:
        """Typed items (``items.py``) of ``tuples``; ``locate(text, label, near)`` grounds one span (the
        occurrence nearest ``near`` when given)."""
        raise NotImplementedError


# ---- small helpers shared by the task modules ------------------------------------------------------------
MAX_ITEMS = 20  # constrained decoding: a bound on list lengths that stops repetition loops


def _require_str_fields(item: Any, keys: tuple[str, ...]) -> str | None:
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    for key in keys:
        if key not in item:
            return f"missing '{key}'"
        if not isinstance(item[key], str):
            return f"'{key}' must be a string"
    return None


def dedup_by(labels: list, key) -> list:
    seen, out = set(), []
    for item in labels:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def group(pairs: Iterable[tuple[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def str_list(value: Any) -> list[str]:
    """The strings of a list answer value (anything else contributes nothing)."""
    return [x for x in value if isinstance(x, str)] if isinstance(value, list) else []


def object_schema(properties: dict[str, dict], required: bool = True) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(properties)
    return schema


def array_of(item: dict) -> dict:
    return {"type": "array", "items": item, "maxItems": MAX_ITEMS}


STRING = {"type": "string"}
SPAN_KEY = "x-span"  # answer-schema keyword: the string names a span of the input (grounded decoding)
SPAN = {"type": "string", SPAN_KEY: True}
SPAN_OR_NAN = {"anyOf": [SPAN, {"const": NAN}]}


class LabelTask(Task):
    """A task whose schema items are plain label strings (NER, RE, SPO, EET)."""

    def positives(self, labels: list) -> list[str]:
        raise NotImplementedError

    def schema_key(self, labels, split):
        return "" if split == "test" else frozenset(self.positives(labels))

    def train_items(self, labels, schema, sampler):
        universe = self.universe(schema)
        selected = sampler.select(_unique(self.positives(labels)), universe, len(universe))
        return None if selected is None else sampler.order(selected)

    def test_items(self, labels, schema):
        return sorted(self.universe(schema))

    def schema_from_json(self, value):
        schema = super().schema_from_json(value)
        return Schema(types=schema.types, roles=schema.types)
