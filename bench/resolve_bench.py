"""Entity-resolution quality on the bundled gold set (``data/resolution/gold.jsonl``): pairwise precision,
recall and F1 of the merges after each stage, and the time taken.

The gold set: 20 short news documents written for this benchmark, each with its entity mentions (surface
form, type) and the gold entity each one names. It holds the usual aliases (titles, surnames, acronyms,
corporate suffixes, diacritics, spelling variants) and hard negatives: namesakes ("Michael Jordan" /
"Michael B. Jordan", "John Smith" / "Jon Smith", "Barack" / "Michelle Obama"), one name with two types
("Amazon" the company and the river, "Jordan" the person and the country, "Washington"), and near-identical
different things ("Apollo 11" / "Apollo 12", "Deutsche Bank" / "Deutsche Telekom", "Apple" / "Apple
Records"). A pair is two distinct names (surface form + type) that share a cluster.

    python bench/resolve_bench.py [--threshold 94] [--sweep 85,90,92,94,95,97] [--report FILE.html]

``--report`` writes the gold set (its mentions as NER results) as the HTML report of ``instructkgc extract``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from instructkgc.extract.resolve import DEFAULT_THRESHOLD, Resolver, collect_names, pairwise

GOLD = Path(__file__).resolve().parents[1] / "data" / "resolution" / "gold.jsonl"


def load_gold(path: Path = GOLD):
    """(mentions as (document, name, type), gold entity of each name)."""
    mentions, gold = [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        for m in doc["mentions"]:
            assert m["text"] in doc["text"], (doc["id"], m["text"])
            mentions.append((doc["id"], m["text"], m["type"]))
            gold[(m["text"], m["type"])] = m["entity"]
    return mentions, gold


def write_report(path: str, threshold: float) -> None:
    from ie2instruction.tasks.items import Result
    from instructkgc.extract.export import write_results
    from instructkgc.extract.outputs import resolve_results

    results = []
    for line in GOLD.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        entities, taken = [], []
        for m in sorted(doc["mentions"], key=lambda m: -len(m["text"])):  # the first free occurrence
            start = doc["text"].find(m["text"])
            while start >= 0 and any(s < start + len(m["text"]) and start < e for s, e in taken):
                start = doc["text"].find(m["text"], start + 1)
            if start < 0:  # every occurrence overlaps a longer name: the first one
                start = doc["text"].find(m["text"])
            taken.append((start, start + len(m["text"])))
            entities.append({"text": m["text"], "type": m["type"], "start": start, "end": start + len(m["text"])})
        entities.sort(key=lambda e: e["start"])
        results.append(Result.from_json({"id": doc["id"], "text": doc["text"], "task": "NER",
                                         "entities": entities}))
    write_results(results, path, "html", resolution=resolve_results(results, Resolver(threshold)))


def score(predicted: set, gold_pairs: set) -> dict:
    tp = len(predicted & gold_pairs)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(gold_pairs) if gold_pairs else 1.0
    return {"pairs": len(predicted), "correct": tp, "P": p, "R": r, "F1": 2 * p * r / (p + r) if p + r else 0.0}


def run(threshold: float, stages=("exact", "rule", "fuzzy")) -> list[dict]:
    mentions, gold = load_gold()
    clusters: dict[str, list] = {}
    for name, entity in gold.items():
        clusters.setdefault(entity, []).append(name)
    gold_pairs = pairwise(clusters.values())
    rows = []
    for stage in stages:
        started = time.perf_counter()
        res = Resolver(threshold, last_stage=stage).resolve(collect_names(mentions))
        seconds = time.perf_counter() - started
        predicted = pairwise(res.clusters())
        wrong = sorted(tuple(sorted(p)) for p in predicted - gold_pairs)
        rows.append({"stage": stage, **score(predicted, gold_pairs), "seconds": seconds, "wrong": wrong,
                     "names": len(gold), "entities": len(clusters), "gold_pairs": len(gold_pairs)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="fuzzy threshold (0-100)")
    parser.add_argument("--report", default=None, help="write the gold set as an HTML report to this file")
    parser.add_argument("--sweep", default="85,90,92,94,95,97", help="fuzzy thresholds to compare ('' for none)")
    args = parser.parse_args(argv)
    rows = run(args.threshold)
    first = rows[0]
    print(f"gold set: {first['names']} names of {first['entities']} entities, {first['gold_pairs']} gold pairs; "
          f"fuzzy threshold {args.threshold:g}")
    print("| stages up to | merged pairs | correct | precision | recall | F1 | ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['pairs']} | {r['correct']} | {r['P']:.3f} | {r['R']:.3f} | {r['F1']:.3f} "
              f"| {r['seconds'] * 1000:.1f} |")
    for r in rows:
        for a, b in r["wrong"]:
            print(f"wrong after {r['stage']}: {a} + {b}")
    if args.report:
        write_report(args.report, args.threshold)
    if args.sweep:
        print("\n| fuzzy threshold | merged pairs | precision | recall | F1 |\n|---:|---:|---:|---:|---:|")
        for t in (float(x) for x in args.sweep.split(",")):
            r = run(t, ("fuzzy",))[0]
            print(f"| {t:g} | {r['pairs']} | {r['P']:.3f} | {r['R']:.3f} | {r['F1']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
