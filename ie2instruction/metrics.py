"""Micro precision / recall / F1 as the original computed them, plus a per-label breakdown.

Counting (as the original, README: Evaluation): over all merged instances, ``pred += len(preds)``, ``gold += len(golds)`` and the true
positives are the greedy multiset match (each prediction consumes one equal gold), which equals the sum over
distinct tuples of ``min(count_pred, count_gold)``. ``set`` mode de-duplicates both sides first. P and R are
rounded to 2 decimals and F1 is computed from the rounded values, as in the original.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Callable, Iterable

MATCH_MODES = ("normal", "set")
TRIPLE_KEYS = ("P", "R", "F1")
EVENT_LEVELS = ("event", "argument")


def percent(num: float, den: float) -> float:
    """``round(num / den * 100, 2)``, or ``0.`` for an empty denominator."""
    return round(num / den * 100, 2) if den else 0.


def f1_of(p: float, r: float) -> float:
    """F1 from already rounded P and R (the original's compounded rounding, kept so scores match)."""
    return round(2 * p * r / (p + r), 2) if p + r else 0.


def prf(tp: int, pred: int, gold: int) -> tuple[float, float, float]:
    p, r = percent(tp, pred), percent(tp, gold)
    return p, r, f1_of(p, r)


def _freeze(value):
    """A hashable stand-in for a tuple element that is not hashable (a list or dict from a lenient parser)."""
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def hashable(items: list) -> list:
    """``items`` unchanged when every tuple hashes, otherwise with unhashable parts frozen."""
    try:
        hash(tuple(items))
        return items
    except TypeError:
        return [_freeze(t) for t in items]


class Tally:
    """Counts of one level (tuples, events or arguments): predicted, gold and matched tuples, by tuple."""

    __slots__ = ("pred", "gold", "tp")

    def __init__(self):
        self.pred: Counter = Counter()
        self.gold: Counter = Counter()
        self.tp: Counter = Counter()

    def add(self, golds: list, preds: list, set_mode: bool = False) -> None:
        if set_mode:
            golds, preds = list(dict.fromkeys(golds)), list(dict.fromkeys(preds))
        self.pred.update(preds)
        self.gold.update(golds)
        if preds and golds:
            left = Counter(golds)
            hits = []
            for t in preds:
                n = left.get(t)
                if n:
                    left[t] = n - 1
                    hits.append(t)
            if hits:
                self.tp.update(hits)

    def totals(self) -> tuple[int, int, int]:
        return sum(self.tp.values()), sum(self.pred.values()), sum(self.gold.values())

    def scores(self) -> tuple[float, float, float]:
        return prf(*self.totals())

    def per_label(self, label_of: Callable[[tuple], str]) -> dict[str, dict]:
        """``{label: {"P", "R", "F1", "support"}}`` in code-point order; support = gold tuples of the label."""
        sums: dict[str, list[int]] = {}
        for i, counter in enumerate((self.tp, self.pred, self.gold)):
            for t, n in counter.items():
                try:
                    label = label_of(t)
                except Exception:  # a malformed tuple has no label: keep it countable
                    label = ""
                sums.setdefault(str(label), [0, 0, 0])[i] += n
        out = {}
        for label in sorted(sums):
            tp, pred, gold = sums[label]
            p, r, f = prf(tp, pred, gold)
            out[label] = {"P": p, "R": r, "F1": f, "support": gold}
        return out


def split_events(events: Iterable[tuple]) -> tuple[list, list]:
    """EE/EEA tuples ``(type, trigger, ((argument, role), ...))`` -> events ``(type, trigger)`` and arguments
    ``(type, argument, role)``, scored independently."""
    evs, args = [], []
    for ev in events:
        etype, trigger, pairs = ev[0], ev[1], ev[2]
        evs.append((etype, trigger))
        args.extend((etype, arg, role) for arg, role in pairs)
    return evs, args


class Group:
    """Counters of one category (``total`` or one ``--sort_by`` value)."""

    def __init__(self, event: bool):
        self.instances = 0
        self.errors = 0
        self.repaired = 0
        self.tallies = (Tally(), Tally()) if event else (Tally(),)
        self.rouge: list[dict] = []


class Scorer:
    """Accumulates merged instances and renders the result object.

    ``label_of`` gives a tuple's label for the breakdown (event tasks: events by type, arguments by role).
    """

    def __init__(self, metric: str, label_of: Callable[[tuple], str], match_mode: str = "normal",
                 repair: bool = False):
        if match_mode not in MATCH_MODES:
            raise ValueError(f"unknown match mode {match_mode!r} (choose from {', '.join(MATCH_MODES)})")
        self.event = metric == "event"
        self.label_of = label_of
        self.set_mode = match_mode == "set"
        self.repair = repair
        self.groups: dict[str, Group] = {"total": Group(self.event)}

    def group(self, category: str | None) -> list[Group]:
        out = [self.groups["total"]]
        if category is not None:
            g = self.groups.get(category)
            if g is None:
                g = self.groups[category] = Group(self.event)
            out.append(g)
        return out

    def add(self, golds: list, preds: list, errors: int = 0, repaired: int = 0,
            category: str | None = None) -> None:
        """One merged instance: its gold tuples, the tuples of all its answers, and its answer problems."""
        golds, preds = hashable(golds), hashable(preds)
        if self.event:
            levels = list(zip(split_events(golds), split_events(preds)))
        else:
            levels = [(golds, preds)]
        for g in self.group(category):
            g.instances += 1
            g.errors += errors
            g.repaired += repaired
            for tally, (gl, pl) in zip(g.tallies, levels):
                tally.add(gl, pl, self.set_mode)

    def add_rouge(self, scores: dict, category: str | None = None) -> None:
        for g in self.group(category):
            g.rouge.append(scores)

    def _render(self, g: Group, with_rouge: bool) -> dict:
        out = {"总样本数": g.instances, "错误数": g.errors}
        if self.event:
            for level, tally in zip(EVENT_LEVELS, g.tallies):
                out.update(zip((f"{level}_{k}" for k in TRIPLE_KEYS), tally.scores()))
        else:
            out.update(zip(TRIPLE_KEYS, g.tallies[0].scores()))
        if with_rouge:
            out.update(average_rouge(g.rouge))
        if self.repair:
            out["repaired"] = g.repaired
        if self.event:
            out["event_per_label"] = g.tallies[0].per_label(lambda t: t[0])
            out["argument_per_label"] = g.tallies[1].per_label(lambda t: t[2])
        else:
            out["per_label"] = g.tallies[0].per_label(self.label_of)
        return out

    def result(self, with_rouge: bool = False) -> dict:
        """``{"total": {...}, <category>: {...}, ...}``, categories in code-point order after ``total``."""
        cats = sorted(k for k in self.groups if k != "total")
        return {k: self._render(self.groups[k], with_rouge) for k in ["total", *cats]}


EXTRA_KEYS = ("repaired", "per_label", "event_per_label", "argument_per_label")


def core(result: dict) -> dict:
    """The result without this implementation's additions: what the original printed and saved."""
    return {cat: {k: v for k, v in d.items() if k not in EXTRA_KEYS} for cat, d in result.items()}


ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")


def average_rouge(scores: list[dict]) -> dict:
    """Mean F-measure (x100, 2 decimals) of per-instance ROUGE scores."""
    if not scores:
        return {k: 0. for k in ROUGE_KEYS}
    return {k: round(sum(s[k] for s in scores) / len(scores) * 100, 2) for k in ROUGE_KEYS}


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the extra to install."""


def tuple_text(items: Iterable) -> str:
    """The strings of a list of tuples (nested ones flattened), space-separated: what ROUGE compares."""
    out: list[str] = []

    def walk(v, depth=0):
        if isinstance(v, (tuple, list)) and depth < 8:
            for x in v:
                walk(x, depth + 1)
        elif v is not None:
            out.append(str(v))

    walk(list(items))
    return " ".join(out)


class Rouge:
    """Per-instance ROUGE-1/2/L F-measures of predicted against gold tuple text (jieba words, rouge-chinese)."""

    def __init__(self):
        try:
            import jieba
            from rouge_chinese import Rouge as _Rouge
        except ImportError:
            raise MissingExtra("--metrics_list rouge needs jieba and rouge-chinese: "
                               "pip install 'instructkgc[rouge]'") from None
        self._cut = jieba.cut
        self._rouge = _Rouge()

    def score(self, preds: list, golds: list) -> dict:
        hyp, ref = (" ".join(w for w in self._cut(tuple_text(x)) if w.strip()) for x in (preds, golds))
        if not hyp or not ref:
            same = float(not hyp and not ref)
            return {k: same for k in ROUGE_KEYS}
        try:
            s = self._rouge.get_scores(hyp, ref)[0]
            return {k: float(s[k]["f"]) for k in ROUGE_KEYS}
        except (ValueError, KeyError, IndexError, ZeroDivisionError, TypeError):
            return {k: 0. for k in ROUGE_KEYS}
