"""No model answer crashes the evaluation: arbitrary and mutated answers go to every parser and the whole path."""
from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from eval_data import TASKS, perfect_records
from ie2instruction.answers import INVALID, load_answer
from ie2instruction.evaluation import Options, evaluate
from ie2instruction.metrics import Scorer
from ie2instruction.tasks import get_task

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["人物", "NAN", "nan", "无", "trigger", "arguments", "subject", "object", "head", "tail", "", "裁员方"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=30,
)
PERFECT = {t: [r["output"] for r in perfect_records(t)] for t in TASKS}
SCHEMAS = {t: [json.loads(r["instruction"])["schema"] for r in perfect_records(t)] for t in TASKS}


def mutate(text: str, rnd: random.Random) -> str:
    """One of the ways model output goes wrong."""
    kind = rnd.randrange(10)
    if kind == 0:
        return text[:rnd.randrange(len(text) + 1)]  # truncated
    if kind == 1:
        return f"```json\n{text}\n```"  # fenced
    if kind == 2:
        return text.replace('"', "'")  # single quotes
    if kind == 3:
        return f"Sure! Here is the answer: {text} Hope this helps."  # prose around it
    if kind == 4:
        return "[" * rnd.randrange(1, 5000) + text  # deep nesting
    if kind == 5:
        return '{"x": "' + "长" * rnd.choice([rnd.randrange(1, 25_000), 400_000]) + '"}'  # huge string
    if kind == 6:
        return json.dumps([json.loads(text)] if rnd.random() < .5 else None)  # list / null
    if kind == 7:
        i = rnd.randrange(len(text) + 1)
        return text[:i] + rnd.choice(['"', "{", "}", "[", "]", ",", ":", "\\", "\x00", "\ud800"]) + text[i:]
    if kind == 8:
        return "{" * 3000 + "}" * 3000
    return text.replace("[", "{", 1)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES, task=st.sampled_from(TASKS))
def test_parsers_take_any_json_value(value, task):
    t = get_task(task)
    for schema in (None, SCHEMAS[task][0], [value]):
        tuples = t.parse(value, schema)
        assert tuples is None or isinstance(tuples, list)
    if isinstance(value, dict):  # and wrapped under every answer key shape the tasks expect
        for wrapped in ({"k": value}, {"k": [value]}, {"k": {"e": value}}):
            assert isinstance(t.parse(wrapped), list)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(TASKS), repair=st.booleans())
def test_mutated_answers_parse_or_count(seed, task, repair):
    rnd = random.Random(seed)
    text = mutate(rnd.choice(PERFECT[task]), rnd)
    value, repaired = load_answer(text, repair=repair)
    assert not (repaired and not repair)
    if value is INVALID:
        return
    tuples = get_task(task).parse(value, rnd.choice(SCHEMAS[task]))
    assert tuples is None or isinstance(tuples, list)
    scorer = Scorer(get_task(task).metric, get_task(task).label_of)
    scorer.add([], tuples or [])
    scorer.result()


@given(text=st.text(max_size=200), repair=st.booleans())
@settings(max_examples=1500, deadline=None)
def test_load_answer_never_raises(text, repair):
    value, repaired = load_answer(text, repair=repair)
    assert repaired in (True, False)


def test_strict_matches_json_loads():
    assert load_answer(' {"a": [1]} \n') == ({"a": [1]}, False)
    assert load_answer("```json\n{}\n```") == (INVALID, False)
    assert load_answer("null") == (None, False)  # valid JSON, a wrong shape for the task (counted later)
    assert load_answer("[" * 100_000)[0] is INVALID  # RecursionError inside json.loads
    assert load_answer("```json\n{\"人物\": [\"张三\"]}\n```", repair=True) == ({"人物": ["张三"]}, True)
    assert load_answer('好的：{"人物": ["张三", "李', repair=True) == ({"人物": ["张三", "李"]}, True)
    assert load_answer("{'人物': ['张三']}", repair=True) == ({"人物": ["张三"]}, True)
    assert load_answer("no json here", repair=True) == (INVALID, False)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("repair", [False, True])
def test_whole_path_with_mutated_file(tmp_path, task, repair):
    rnd = random.Random(hash(task) & 0xffff)
    recs = [{**r, "output": mutate(r["output"], rnd)} for r in perfect_records(task) * 10]
    path = tmp_path / "p.json"  # ASCII escapes: lone surrogates in an answer survive the file
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    _, result = evaluate(path, Options(task=task, repair=repair, sort_by="source"), warn=lambda *a: None)
    total = result["total"]
    assert 0 <= total["错误数"] <= len(recs)
    assert total["总样本数"] == len({r["id"] for r in recs})
    if repair:
        assert total["repaired"] >= 0
    json.dumps(result, ensure_ascii=False)  # the result always serialises


@settings(max_examples=1000, deadline=None)
@given(value=JSON_VALUES, mutate_seed=st.integers(0, 2**32 - 1))
def test_fast_loads_decides_like_json(value, mutate_seed):
    """Evaluation's orjson fast path returns what json.loads returns, and fails where it fails."""
    from ie2instruction.io import fast_loads

    text = json.dumps(value, ensure_ascii=random.Random(mutate_seed).random() < 0.5)
    for candidate in (text, mutate(text, random.Random(mutate_seed))):
        try:
            expected = json.loads(candidate)
        except (ValueError, RecursionError) as err:
            with pytest.raises(type(err)):
                fast_loads(candidate)
            continue
        got = fast_loads(candidate)
        if re.search(r"\d{19}", candidate):
            continue  # integers beyond 64 bits come back as floats (documented; evaluation reads strings only)
        assert json.dumps(got) == json.dumps(expected)  # as JSON text: nan != nan
