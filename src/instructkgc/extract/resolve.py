"""Entity resolution: which entity names of a run (over all its documents) are one entity, and why.

The unit is a *name*: a surface form with its type (``("Barack Obama", "person")``; relation ends and event
arguments have type ``""``). Names are merged into clusters in stages, each stage only adding merges:

1. ``exact``: equal after normalisation (Unicode NFKC, case-fold, diacritics removed, punctuation and
   whitespace collapsed): "Barack  Obama", "barack obama", "Barack Obama." .
2. ``rule``: equal once honorifics and titles ("President", "Dr.") or corporate suffixes ("Inc.", "Ltd")
   are removed (rules ``honorific`` / ``corporate-suffix``; names with different titles, "Mrs. Obama" and
   "President Obama", are not merged); the acronym of exactly one longer name ("IBM" = "International
   Business Machines", rule ``acronym``); a name whose words end exactly one longer name ("Obama" = "Barack
   Obama" while no other "… Obama" exists, rule ``token-subset``; only the last words, as surnames are used,
   so "Apple" does not become "Apple Records").
3. ``fuzzy``: rapidfuzz ``token_sort_ratio`` of the normalised names at least ``threshold`` (0-100),
   never between names that differ in a number ("Apollo 11" / "Apollo 12"). The rules then run once more,
   as a fuzzy merge can leave a rule one candidate where it saw two ("WHO" once "World Health
   Organization" and "World Health Organisation" are one).
4. ``judge`` (optional): pairs scoring between ``judge_floor`` and ``threshold`` are asked to a judge (the
   loaded model: "Are X and Y the same person?").

Types block merges: two names merge only when their types are equal, or one is untyped and the typed cluster
it would join is the only candidate. Ambiguity blocks merges too: a rule applies only when exactly one
cluster qualifies. Every merge is logged (:class:`Merge`; ``--merge_log`` writes them as JSONL). The
canonical name of a cluster is its most frequent name (ties: the longest, then the first in code-point
order), so the same input always gives the same graph.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

Name = tuple[str, str]  # (surface form, type)
Judge = Callable[[list[tuple[Name, Name]]], list[bool]]

STAGES = ("exact", "rule", "fuzzy", "judge")
DEFAULT_THRESHOLD = 94.0  # chosen on the gold set: README, "Entity resolution"
DEFAULT_JUDGE_FLOOR = 75.0

HONORIFICS = frozenset("""mr mrs ms miss mx madame mme monsieur herr frau dr prof professor sir dame lord
lady president vice senator sen
rep representative governor gov mayor minister chancellor premier secretary general gen colonel col captain
capt lieutenant lt sergeant sgt admiral judge justice king queen prince princess pope saint st rev reverend
father sister brother sheikh ceo chairman chairwoman chair director""".split())
CORPORATE = frozenset("""inc incorporated corp corporation co company ltd limited llc llp plc gmbh ag sa nv bv
se spa srl oy ab kk holdings holding group com""".split())  # "Amazon.com Inc." -> "amazon"
STOPWORDS = frozenset("of the and for de du des la le von van der".split())
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)
_DIGITS = re.compile(r"\d+")


def normalise(name: str) -> str:
    """NFKC, case-folded, without diacritics, punctuation and runs of whitespace as one space."""
    s = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name).casefold())
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.replace("&", " and ").replace("'", "").replace("\u2019", "")
    return " ".join(_PUNCT.sub(" ", s).split())


def _strip(tokens: list[str], words: frozenset) -> list[str]:
    """``tokens`` without leading and trailing ``words`` (never all of them)."""
    lo, hi = 0, len(tokens)
    while lo < hi - 1 and tokens[lo] in words:
        lo += 1
    while hi > lo + 1 and tokens[hi - 1] in words:
        hi -= 1
    return tokens[lo:hi]


def core_tokens(name: str) -> list[str]:
    """The normalised words of ``name`` without honorifics and corporate suffixes."""
    return _strip(_strip(normalise(name).split(), HONORIFICS), CORPORATE)


def acronym(name: str) -> str:
    """Initials of the name's words (stop words skipped, "&" counts as nothing): "International Business
    Machines" -> "ibm"; "" for names of fewer than two words."""
    words = [w for w in _strip(normalise(name).split(), CORPORATE) if w not in STOPWORDS and w != "and"]
    return "".join(w[0] for w in words) if len(words) >= 2 else ""


def _as_acronym(name: str) -> str:
    """The letters of a name written as an acronym ("IBM", "U.N."), or "" when it is not one."""
    letters = re.sub(r"[.\s]", "", name)
    if 2 <= len(letters) <= 8 and letters.isalpha() and letters.isupper():
        return letters.casefold()
    return ""


@dataclass
class Merge:
    """One merge: ``a`` joins the cluster of ``b`` (each a name and its type)."""

    a: str
    a_type: str
    b: str
    b_type: str
    stage: str
    rule: str
    evidence: str
    score: Optional[float] = None
    documents: dict = field(default_factory=dict)  # name -> the documents it occurs in

    def as_dict(self) -> dict:
        return asdict(self)


class Resolution:
    """Clusters of names with their canonical name, aliases and the merges that made them."""

    def __init__(self, names: dict[Name, dict]):
        self.info = names  # name -> {"count": mentions, "docs": set of document ids}
        self.parent: dict[Name, Name] = {n: n for n in names}
        self.types: dict[Name, str] = {n: n[1] for n in names}  # cluster root -> its type ("" untyped)
        self.merges: list[Merge] = []

    def find(self, n: Name) -> Name:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def members(self) -> dict[Name, list[Name]]:
        out: dict[Name, list[Name]] = {}
        for n in sorted(self.parent):
            out.setdefault(self.find(n), []).append(n)
        return out

    def union(self, a: Name, b: Name, stage: str, rule: str, evidence: str, score: Optional[float] = None) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        ta, tb = self.types[ra], self.types[rb]
        if ta and tb and ta != tb:
            return False
        self.parent[ra] = rb
        self.types[rb] = tb or ta
        docs = {a[0]: sorted(self.info[a]["docs"]), b[0]: sorted(self.info[b]["docs"])}
        self.merges.append(Merge(a[0], a[1], b[0], b[1], stage, rule, evidence, score, docs))
        return True

    # ---- the result ---------------------------------------------------------------------------------------
    def canonical(self, name: Name) -> Name:
        """The canonical (name, type) of ``name``'s cluster."""
        return self._canonical[self.find(name)]

    def aliases(self, canonical: Name) -> list[str]:
        """The other surface forms of the cluster whose canonical name is ``canonical`` (sorted)."""
        return self._aliases.get(canonical, [])

    def finish(self, fixed: frozenset = frozenset()) -> "Resolution":
        """Choose canonical names (a ``fixed`` name first, then see the module docstring)."""
        self._canonical: dict[Name, Name] = {}
        self._aliases: dict[Name, list[str]] = {}
        for root, members in self.members().items():
            best = min(members, key=lambda n: (n not in fixed, -self.info[n]["count"], -len(n[0]), n[0], n[1]))
            ctype = best[1] or next((t for _, t in members if t), "")
            self._canonical[root] = (best[0], ctype)
            others = sorted({n[0] for n in members} - {best[0]})
            if others:
                self._aliases[(best[0], ctype)] = others
        return self

    def clusters(self) -> list[list[Name]]:
        return list(self.members().values())


def collect_names(mentions: Iterable[tuple[str, str, str]]) -> dict[Name, dict]:
    """``(document id, name, type)`` mentions -> {name: {"count", "docs"}}."""
    names: dict[Name, dict] = {}
    for doc, name, etype in mentions:
        info = names.setdefault((name, etype), {"count": 0, "docs": set()})
        info["count"] += 1
        info["docs"].add(doc)
    return names


class Resolver:
    """Runs the stages (see the module docstring) up to ``last_stage``."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, judge: Optional[Judge] = None,
                 judge_floor: float = DEFAULT_JUDGE_FLOOR, last_stage: str = "judge"):
        if not 0 <= threshold <= 100:
            raise ValueError(f"the fuzzy threshold is 0-100, got {threshold}")
        self.threshold, self.judge, self.judge_floor = threshold, judge, judge_floor
        self.last = STAGES.index(last_stage)

    def resolve(self, names: dict[Name, dict], fixed: Iterable[Name] = ()) -> Resolution:
        """Cluster ``names``. ``fixed``: names of entities already stored; they join clusters like any name
        but a cluster holding one keeps that name as its canonical name."""
        res = Resolution(names)
        self._exact(res)
        if self.last >= 1:
            self._rules(res)
        if self.last >= 2:
            self._fuzzy(res)
            self._rules(res)  # again: a fuzzy merge can leave a rule one candidate where it saw two
        if self.last >= 3 and self.judge is not None:
            self._judge(res)
        return res.finish(frozenset(fixed))

    # ---- stages -------------------------------------------------------------------------------------------
    @staticmethod
    def _group(res: Resolution, key: Callable[[Name], str], stage: str, rule: str, why: str,
               ok: Callable[[list[Name]], bool] = lambda members: True) -> None:
        """Merge names with equal non-empty ``key`` and compatible types (a group that ``ok`` refuses is left
        alone); untyped names join only a unique typed group."""
        groups: dict[tuple[str, str], list[Name]] = {}
        for n in sorted(res.info):
            k = key(n)
            if k:
                groups.setdefault((k, n[1]), []).append(n)
        groups = {k: members for k, members in groups.items() if ok(members)}
        for (k, etype), members in sorted(groups.items()):
            for other in members[1:]:
                res.union(other, members[0], stage, rule, why.format(k))
        by_key: dict[str, list[Name]] = {}
        for (k, etype), members in groups.items():
            if etype:
                by_key.setdefault(k, []).append(members[0])
        for (k, etype), members in sorted(groups.items()):
            typed = by_key.get(k, [])
            if not etype and len({res.find(t) for t in typed}) == 1:
                res.union(members[0], typed[0], stage, rule, why.format(k) + " (untyped name, one typed match)")

    def _exact(self, res: Resolution) -> None:
        self._group(res, lambda n: normalise(n[0]), "exact", "normalised", "both normalise to '{}'")

    def _rules(self, res: Resolution) -> None:
        def stripped(words: frozenset) -> Callable[[Name], str]:
            return lambda n: " ".join(_strip(normalise(n[0]).split(), words))

        def one_title(members: list[Name]) -> bool:  # "Mrs. Obama" and "President Obama": not one person
            titles = {tuple(t for t in normalise(n[0]).split() if t in HONORIFICS) for n in members}
            return len(titles - {()}) <= 1

        self._group(res, stripped(HONORIFICS), "rule", "honorific", "equal without honorifics: '{}'", one_title)
        self._group(res, stripped(CORPORATE), "rule", "corporate-suffix", "equal without corporate suffixes: '{}'")
        self._acronyms(res)
        self._subsets(res)

    @staticmethod
    def _candidates(res: Resolution, n: Name, pool: list[Name]) -> set[Name]:
        """Clusters of ``pool`` that ``n`` may join (type-compatible, not its own)."""
        mine, ctype = res.find(n), res.types[res.find(n)]
        roots = {res.find(m) for m in pool} - {mine}
        return {r for r in roots if not ctype or not res.types[r] or res.types[r] == ctype}

    def _acronyms(self, res: Resolution) -> None:
        long_by_acronym: dict[str, list[Name]] = {}
        for n in sorted(res.info):
            a = acronym(n[0])
            if a:
                long_by_acronym.setdefault(a, []).append(n)
        for n in sorted(res.info):
            letters = _as_acronym(n[0])
            pool = long_by_acronym.get(letters, [])
            targets = self._candidates(res, n, pool)
            if len(targets) == 1:
                target = next(m for m in pool if res.find(m) in targets)
                res.union(n, target, "rule", "acronym", f"'{n[0]}' is the acronym of '{target[0]}'")

    def _subsets(self, res: Resolution) -> None:
        tokens = {n: tuple(core_tokens(n[0])) for n in res.info}
        ends: dict[tuple, list[Name]] = {}  # the last k words of a name (k < its length) -> the names
        for m in sorted(res.info):
            for k in range(1, len(tokens[m])):
                ends.setdefault(tokens[m][-k:], []).append(m)
        for n in sorted(res.info, key=lambda n: (len(tokens[n]), n)):
            mine = tokens[n]
            if not mine or all(t.isdigit() for t in mine):
                continue
            pool = ends.get(mine, [])
            targets = self._candidates(res, n, pool)
            if len(targets) == 1:
                target = max((m for m in pool if res.find(m) in targets), key=lambda m: (len(tokens[m]), m))
                res.union(n, target, "rule", "token-subset",
                          f"'{n[0]}' ends '{target[0]}' and no other name of the type")

    def _pairs(self, res: Resolution, floor: float):
        """Pairs of names in different clusters of one type whose similarity is at least ``floor``, best first
        (numbers must agree; an untyped name joins a typed one only by a rule)."""
        by_type: dict[str, list[Name]] = {}
        for n in sorted(res.info):
            by_type.setdefault(res.types[res.find(n)], []).append(n)
        out = []
        for names in by_type.values():
            norm = [normalise(n[0]) for n in names]
            for i, j, score in _matches(norm, floor):
                if _DIGITS.findall(norm[i]) != _DIGITS.findall(norm[j]) or min(len(norm[i]), len(norm[j])) < 4:
                    continue
                out.append((score, names[i], names[j]))
        out.sort(key=lambda x: (-x[0], x[1], x[2]))
        return out

    def _fuzzy(self, res: Resolution) -> None:
        for score, a, b in self._pairs(res, self.threshold):
            if res.find(a) != res.find(b):
                why = f"rapidfuzz token_sort_ratio {score:.1f} >= {self.threshold:g}"
                res.union(a, b, "fuzzy", "similarity", why, round(score, 1))

    def _judge(self, res: Resolution) -> None:
        pairs = [(s, a, b) for s, a, b in self._pairs(res, self.judge_floor)
                 if s < self.threshold and res.find(a) != res.find(b)]
        if not pairs:
            return
        answers = self.judge([(a, b) for _, a, b in pairs])
        for (score, a, b), same in zip(pairs, answers):
            if same:
                res.union(a, b, "judge", "model", f"the model judged them the same (token_sort_ratio {score:.1f})",
                          round(score, 1))


def _matches(norm: list[str], floor: float, rows: int = 512):
    """(i, j, score) for i < j with ``fuzz.token_sort_ratio`` >= floor (``rows`` names at a time, so memory
    stays ``rows * len(norm)``)."""
    import numpy as np
    from rapidfuzz import fuzz, process

    for lo in range(0, len(norm), rows):
        block = process.cdist(norm[lo:lo + rows], norm, scorer=fuzz.token_sort_ratio, score_cutoff=floor,
                              dtype=np.uint8, workers=1)
        for i, j in zip(*np.nonzero(block)):
            if lo + i < j:
                yield int(lo + i), int(j), float(fuzz.token_sort_ratio(norm[lo + i], norm[j]))


def pairwise(clusters: Iterable[Iterable[Name]]) -> set[frozenset]:
    """All unordered pairs of names that share a cluster."""
    out = set()
    for members in clusters:
        members = sorted(set(members))
        out.update(frozenset((a, b)) for i, a in enumerate(members) for b in members[i + 1:])
    return out
