"""Conversion throughput and memory: this project's convert_func vs a straightforward implementation.

Builds a synthetic NER input (12 entity types, ~40 words per text) of 100k and 1M records and converts it with
``--split train --split_num 6``. The baseline is a plain single-process loop written the way the original
works (read everything, one ``json.dumps`` per object); it runs at 100k records only, because it holds the whole
input in memory. Each run is a fresh process, so peak RSS is per run.

    python bench/convert_bench.py [--sizes 100000,1000000]

Last line: ``convert: <records/s> rec/s, peak RSS <MB> MB at 1M records``.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["person", "organization", "location", "date", "event", "product", "work", "law", "language",
         "facility", "money", "nationality"]
WORDS = ("the of and to in a is that for on with as by at from river company city report said new first year "
         "university market team season minister water energy museum court study data record").split()


def make_input(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(40)]
            ents = []
            for _ in range(rng.randint(0, 4)):
                i = rng.randrange(40)
                words[i] = f"Name{rng.randrange(10000)}"
                ents.append({"entity": words[i], "entity_type": rng.choice(TYPES)})
            f.write(json.dumps({"text": " ".join(words), "entity": ents}, ensure_ascii=False) + "\n")


BASELINE = r'''
import hashlib, json, sys
src, tgt, schema_path = sys.argv[1:4]
n = 6
types = set(json.loads(open(schema_path, encoding="utf-8").readlines()[0]))
instr = "You are an expert in named entity recognition. Please extract entities that match the schema definition from the input. Return an empty list if the entity type does not exist. Please respond in the format of a JSON string."
def split(s):
    full = max(len(s) // n, 1) * n
    chunks = [s[i:i + n] for i in range(0, full, n)]
    r = len(s) - full
    if r >= max(1, n // 2): chunks.append(s[full:])
    elif r > 0: chunks[-1] = chunks[-1] + s[full:]
    return chunks
records = [json.loads(line) for line in open(src, encoding="utf-8")]
out = []
for rec in records:
    seen, ents = set(), []
    for e in rec["entity"]:
        k = (e["entity"], e["entity_type"])
        if k not in seen:
            seen.add(k); ents.append(e)
    pos = set(e["entity_type"] for e in ents)
    items = sorted(list(types - pos) + list(pos))
    groups = {}
    for e in ents:
        groups.setdefault(e["entity_type"], []).append(e["entity"])
    for chunk in split(items):
        output = {t: groups.get(t, []) for t in chunk}
        inst = {"instruction": instr, "schema": chunk, "input": rec["text"]}
        out.append({"task": "NER", "source": "bench", "instruction": json.dumps(inst, ensure_ascii=False),
                    "output": json.dumps(output, ensure_ascii=False)})
with open(tgt, "w", encoding="utf-8") as f:
    for r in out:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
'''


PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command in a fresh process (through a wrapper that reads its peak RSS); return (seconds, MB)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, int(out.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp) / "bench"
        tmp.mkdir()
        schema = tmp / "schema.json"
        schema.write_text(json.dumps(TYPES) + "\n[]\n{}\n", encoding="utf-8")
        rate = rss = None
        for n in sizes:
            src = tmp / f"in_{n}.json"
            make_input(src, n)
            ours_out, base_out = tmp / f"ours_{n}.json", tmp / f"base_{n}.json"
            t_ours, rss_ours = timed([sys.executable, str(ROOT / "ie2instruction" / "convert_func.py"),
                                      "--src_path", str(src), "--tgt_path", str(ours_out),
                                      "--schema_path", str(schema), "--task", "NER", "--split", "train",
                                      "--split_num", "6", "--language", "en"])
            line = f"{n:>8} records: ours {n / t_ours:>9,.0f} rec/s, peak RSS {rss_ours:6.0f} MB"
            if n <= 100_000:
                t_base, rss_base = timed([sys.executable, "-c", BASELINE, str(src), str(base_out), str(schema)])
                same = ours_out.read_bytes() == base_out.read_bytes()
                line += (f" | baseline {n / t_base:>9,.0f} rec/s, peak RSS {rss_base:6.0f} MB"
                         f" | {t_base / t_ours:.2f}x faster, output {'identical' if same else 'DIFFERENT'}")
            print(line, flush=True)
            rate, rss = n / t_ours, rss_ours
            for p in (src, ours_out, base_out):
                p.unlink(missing_ok=True)
    print(f"convert: {rate:,.0f} rec/s, peak RSS {rss:.0f} MB at {sizes[-1]:,} records")


if __name__ == "__main__":
    main()
