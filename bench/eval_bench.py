"""Evaluation throughput: this implementation against a straightforward single-process baseline.

Builds a synthetic RE prediction file (default 200k records: 50k texts x 4 schema chunks; some answers perturbed,
some truncated), scores it with ``ie2instruction.evaluation`` and with a baseline written here that mirrors the
original's loop (json.loads per line, merge by source+id, strict json.loads per answer, list-copy + list.remove
matching), checks both give the same P/R/F1, and prints records/s for both and the ratio.
Last line: ``eval: <records/s> rec/s``.

    python bench/eval_bench.py [--records 200000] [--keep PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from copy import deepcopy

from ie2instruction.evaluation import Options, evaluate
from ie2instruction.metrics import core

RELATIONS = ["主演", "导演", "国籍", "父亲", "母亲", "出生地", "毕业院校", "所属专辑", "作者", "妻子", "丈夫", "总部地点",
             "成立日期", "创始人", "董事长", "歌手", "作词", "作曲", "出品公司", "上映时间"]
SENTENCE = "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。请按照JSON字符串的格式回答。"


def build(path: str, n_records: int, chunk: int = 4, seed: int = 0) -> None:
    rnd = random.Random(seed)
    names = [f"实体{i}" for i in range(2000)]
    per_text = len(RELATIONS) // chunk
    with open(path, "w", encoding="utf-8") as f:
        for t in range(n_records // per_text):
            text = f"第{t}段文本：" + "".join(rnd.sample(names, 6)) + "。" * 20
            labels = [{"head": rnd.choice(names), "relation": rnd.choice(RELATIONS), "tail": rnd.choice(names)}
                      for _ in range(rnd.randrange(0, 4))]
            label = json.dumps(labels, ensure_ascii=False)
            rid = f"{t:064x}"
            for c in range(per_text):
                schema = RELATIONS[c * chunk:(c + 1) * chunk]
                answer = {r: [{"head": x["head"], "tail": x["tail"]} for x in labels if x["relation"] == r]
                          for r in schema}
                roll = rnd.random()
                if roll < 0.1:
                    answer[schema[0]].append({"head": rnd.choice(names), "tail": rnd.choice(names)})
                output = json.dumps(answer, ensure_ascii=False)
                if roll > 0.98:
                    output = output[:len(output) // 2]
                instruction = json.dumps({"instruction": SENTENCE, "schema": schema, "input": text},
                                         ensure_ascii=False)
                rec = {"id": rid, "task": "RE", "source": f"DS{t % 3}", "instruction": instruction,
                       "label": label, "output": output}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


# ---- the baseline: the original's loop, written plainly ---------------------------------------------------------
def baseline(path: str, sort_by: str = "source") -> dict:
    records = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            key = data.get("source", "None") + data["id"]
            if key not in records:
                records[key] = {"input": json.loads(data["instruction"])["input"], "source": data.get("source"),
                                "label": json.loads(data["label"]), "outputs": [data["output"]]}
            else:
                records[key]["outputs"].append(data["output"])

    class Metric:
        def __init__(self):
            self.tp = self.gold_num = self.pred_num = 0
            self.cnt = self.error = 0

        def count(self, golds, preds):
            self.cnt += 1
            golds = [tuple(it) for it in golds]
            preds = [tuple(it) for it in preds]
            dup_gold, dup_pred = deepcopy(golds), deepcopy(preds)
            self.pred_num += len(preds)
            self.gold_num += len(golds)
            for p in preds:
                if p in dup_gold:
                    self.tp += 1
                    dup_gold.remove(p)
                    dup_pred.remove(p)

        def result(self):
            p = round(self.tp / self.pred_num * 100, 2) if self.pred_num else 0.
            r = round(self.tp / self.gold_num * 100, 2) if self.gold_num else 0.
            return {"总样本数": self.cnt, "错误数": self.error, "P": p, "R": r,
                    "F1": round(2 * p * r / (p + r), 2) if p + r else 0.}

    def extract(output):
        try:
            rst = json.loads(output)
        except json.JSONDecodeError:
            return False, []
        if type(rst) != dict:
            return False, []
        out = []
        for key, values in rst.items():
            if type(key) != str or type(values) != list:
                continue
            for value in values:
                if type(value) != dict:
                    continue
                head, tail = value.get("head", ""), value.get("tail", "")
                if type(head) != str or type(tail) != str:
                    continue
                out.append((head, key, tail))
        return True, out

    metrics = {"total": Metric()}
    for rec in records.values():
        cat = str(rec["source"]) if sort_by == "source" else None
        targets = [metrics["total"]] + ([metrics.setdefault(cat, Metric())] if cat is not None else [])
        preds = []
        for output in rec["outputs"]:
            ok, tuples = extract(output)
            if not ok:
                for m in targets:
                    m.error += 1
            preds.extend(tuples)
        golds = [(x.get("head", ""), x.get("relation", ""), x.get("tail", "")) for x in rec["label"]]
        for m in targets:
            m.count(golds, preds)
    return {k: metrics[k].result() for k in ["total", *sorted(k for k in metrics if k != "total")]}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--keep", default=None, help="write the synthetic file here (default: a temporary file)")
    args = ap.parse_args()
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="eval_bench_"), "pred.json")
    _, t_build = timed(build, path, args.records)
    n = sum(1 for _ in open(path, encoding="utf-8"))
    print(f"synthetic RE predictions: {n} records ({os.path.getsize(path) / 1e6:.1f} MB) built in {t_build:.1f}s")

    base, t_base = timed(baseline, path)
    (_, ours), t_ours = timed(evaluate, path, Options(task="RE", sort_by="source"), lambda *a: None)
    assert core(ours) == base, (core(ours)["total"], base["total"])
    print(f"baseline (original's loop):  {t_base:6.2f}s  {n / t_base:10.0f} rec/s")
    print(f"ie2instruction.evaluation:   {t_ours:6.2f}s  {n / t_ours:10.0f} rec/s  (same P/R/F1: {core(ours)['total']})")
    print(f"speed-up: {t_base / t_ours:.2f}x")
    if not args.keep:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    print(f"eval: {n / t_ours:.0f} rec/s")


if __name__ == "__main__":
    main()
