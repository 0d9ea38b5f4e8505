"""Every task: a perfect prediction file scores 100, an empty-answer file 0 with the right counts."""
from __future__ import annotations

import json

import pytest

from eval_data import TASKS, gold_count, perfect_records, write_jsonl
from ie2instruction.evaluation import Options, evaluate
from ie2instruction.tasks import get_task


def _score(tmp_path, task, records, **opts):
    path = write_jsonl(tmp_path / f"{task}.json", records)
    return evaluate(path, Options(task=task, **opts), warn=lambda *a: None)[1]["total"]


def _f1_keys(task):
    return ("event_F1", "argument_F1") if get_task(task).metric == "event" else ("F1",)


@pytest.mark.parametrize("match_mode", ["normal", "set"])
@pytest.mark.parametrize("task", TASKS)
def test_perfect_scores_100(tmp_path, task, match_mode):
    recs = perfect_records(task)
    total = _score(tmp_path, task, recs, match_mode=match_mode)
    n_texts = len({r["id"] for r in recs})
    assert (total["总样本数"], total["错误数"]) == (n_texts, 0)
    for key in _f1_keys(task):
        prefix = key[:-2]
        assert (total[prefix + "P"], total[prefix + "R"], total[key]) == (100.0, 100.0, 100.0)
    per = total.get("per_label") or total["event_per_label"]
    assert sum(v["support"] for v in per.values()) == gold_count(task)
    assert all(v["F1"] == 100.0 for v in per.values() if v["support"])


@pytest.mark.parametrize("task", TASKS)
def test_empty_answers_score_0(tmp_path, task):
    recs = perfect_records(task)
    n_texts = len({r["id"] for r in recs})
    # a valid but empty answer: nothing predicted, no error
    total = _score(tmp_path, task, [{**r, "output": "{}"} for r in recs])
    assert (total["总样本数"], total["错误数"]) == (n_texts, 0)
    assert all(total[k] == 0.0 for k in _f1_keys(task))
    # an empty string is not JSON: one error per answer
    total = _score(tmp_path, task, [{**r, "output": ""} for r in recs])
    assert (total["总样本数"], total["错误数"]) == (n_texts, len(recs))
    assert all(total[k] == 0.0 for k in _f1_keys(task))


@pytest.mark.parametrize("task", TASKS)
def test_duplicated_prediction_lines_are_scored_once(tmp_path, task, capsys):
    """Every line given twice (two runs concatenated): the repeats are skipped and reported, in both modes
    (the original pooled them: precision 50 for a perfect prediction)."""
    recs = perfect_records(task)
    doubled = []
    for r in recs:
        doubled += [r, r]
    normal = _score(tmp_path, task, doubled)
    strict_set = _score(tmp_path, task, doubled, match_mode="set")
    key = _f1_keys(task)[0]
    prefix = key[:-2]
    assert normal[prefix + "P"] == 100.0 and normal[prefix + "R"] == 100.0
    assert strict_set[key] == 100.0
    assert f"{len(recs)} lines repeat an earlier line" in capsys.readouterr().err


def test_spo_keeps_types_of_shared_predicates(tmp_path):
    """Two schema items share the predicate 出生地 (人物/企业): the typed answer scores only with the right types."""
    recs = perfect_records("SPO")
    total = _score(tmp_path, "SPO", recs)
    assert total["per_label"]["人物_出生地_地点"]["support"] == 1
    assert total["per_label"]["人物_出生地_地点"]["F1"] == 100.0
    assert total["per_label"].get("企业_出生地_地点", {"support": 0})["support"] == 0
    # answering 张三/杭州 under the 企业 chunk instead is a false positive of 企业_出生地_地点 and a miss
    for r in recs:
        schema = json.loads(r["instruction"])["schema"]
        types = {(i["subject_type"], i["predicate"]) for i in schema}
        out = json.loads(r["output"])
        if ("人物", "出生地") in types:
            out["出生地"] = []
        if ("企业", "出生地") in types and "张三" in r["instruction"]:
            out["出生地"] = [{"subject": "张三", "object": "杭州"}]
        r["output"] = json.dumps(out, ensure_ascii=False)
    total = _score(tmp_path, "SPO", recs)
    assert total["per_label"]["企业_出生地_地点"] == {"P": 0.0, "R": 0.0, "F1": 0.0, "support": 0}
    assert total["per_label"]["人物_出生地_地点"]["R"] == 0.0
