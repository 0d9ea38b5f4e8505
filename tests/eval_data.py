"""Prediction files for the evaluation tests, built with the project's own converter from tiny inline samples.

``perfect_records(task)`` gives test records whose ``output`` is the task's own rendering of the gold answer
for each instruction chunk, so a correct evaluation scores exactly 100.
"""
from __future__ import annotations

import json
from pathlib import Path

from ie2instruction.convert import Converter
from ie2instruction.tasks import Sampler, Schema, get_task

TASKS = ("NER", "RE", "SPO", "EE", "EET", "EEA", "KG")

_EVENTS = [
    {"event_type": "组织关系-裁员", "event_trigger": "裁员",
     "arguments": [{"argument": "某公司", "role": "裁员方"}, {"argument": "900人", "role": "裁员人数"}]},
    {"event_type": "组织关系-加盟", "event_trigger": "加盟",
     "arguments": [{"argument": "张三", "role": "加盟者"}, {"argument": "湖人", "role": "所加盟组织"},
                   {"argument": "李四", "role": "加盟者"}]},
]
_EVENT_SCHEMA = Schema(types=["组织关系-裁员", "组织关系-加盟", "竞赛行为-胜负"],
                       type_roles={"组织关系-裁员": ["裁员方", "裁员人数", "时间"],
                                   "组织关系-加盟": ["加盟者", "所加盟组织"],
                                   "竞赛行为-胜负": ["胜者", "败者"]})

SAMPLES = {
    "NER": (Schema(types=["人物", "地理位置", "组织机构"]), "entity", [
        ("张三和李四在北京的清华大学工作。", [{"entity": "张三", "entity_type": "人物"},
                                  {"entity": "李四", "entity_type": "人物"},
                                  {"entity": "北京", "entity_type": "地理位置"},
                                  {"entity": "清华大学", "entity_type": "组织机构"}]),
        ("今天天气很好。", []),
        ("王五去了上海。", [{"entity": "王五", "entity_type": "人物"}, {"entity": "上海", "entity_type": "地理位置"}]),
    ]),
    "RE": (Schema(roles=["主演", "导演", "国籍", "父亲", "出生地"]), "relation", [
        ("《喜剧之王》由周星驰主演并导演。", [{"head": "喜剧之王", "relation": "主演", "tail": "周星驰"},
                                  {"head": "喜剧之王", "relation": "导演", "tail": "周星驰"}]),
        ("没有关系的句子。", []),
        ("张三出生于杭州，父亲是张大。", [{"head": "张三", "relation": "出生地", "tail": "杭州"},
                                {"head": "张三", "relation": "父亲", "tail": "张大"}]),
    ]),
    "SPO": (Schema(types=["人物_父亲_人物", "影视作品_主演_人物", "人物_出生地_地点", "企业_出生地_地点"],
                   roles=["父亲", "主演", "出生地"]), "relation", [
        ("张三出生于杭州，父亲是张大。",
         [{"head": "张三", "head_type": "人物", "relation": "出生地", "tail": "杭州", "tail_type": "地点"},
          {"head": "张三", "head_type": "人物", "relation": "父亲", "tail": "张大", "tail_type": "人物"}]),
        ("《喜剧之王》由周星驰主演。",
         [{"head": "喜剧之王", "head_type": "影视作品", "relation": "主演", "tail": "周星驰", "tail_type": "人物"}]),
        ("无关。", []),
    ]),
    "EE": (_EVENT_SCHEMA, "event", [
        ("某公司5月裁员900人；张三和李四加盟湖人。", _EVENTS),
        ("比赛结束了。", []),
    ]),
    "EET": (_EVENT_SCHEMA, "event", [
        ("某公司5月裁员900人；张三和李四加盟湖人。", _EVENTS),
        ("比赛结束了。", []),
    ]),
    "EEA": (_EVENT_SCHEMA, "event", [
        ("某公司5月裁员900人；张三和李四加盟湖人。", _EVENTS),
        ("某公司裁员。", [{"event_type": "组织关系-裁员", "event_trigger": "裁员",
                     "arguments": [{"argument": "某公司", "role": "裁员方"}]}]),
    ]),
    "KG": (Schema(roles=["别名", "父母", "配偶"], type_roles={"人物": ["别名", "父母", "配偶"]}), "relation", [
        ("明治天皇名睦仁，父母是孝明天皇与英照皇太后。",
         [{"head": "明治天皇", "relation": "别名", "tail": "睦仁"},
          {"head": "明治天皇", "relation": "父母", "tail": "孝明天皇"},
          {"head": "明治天皇", "relation": "父母", "tail": "英照皇太后"},
          {"head": "孝明天皇", "relation": "配偶", "tail": "英照皇太后"}]),
        ("张三的别名是小张。", [{"head": "张三", "relation": "别名", "tail": "小张"}]),
    ]),
}
SPLIT_NUM = {"NER": 2, "RE": 2, "SPO": 2, "EE": 1, "EET": 2, "EEA": 1, "KG": 1}


def perfect_records(task_name: str, source: str = "inline") -> list[dict]:
    """Test records with a perfect ``output`` per instruction chunk."""
    task = get_task(task_name)
    schema, field, samples = SAMPLES[task_name]
    conv = Converter(task, schema, "test", SPLIT_NUM[task_name], "zh", source, Sampler())
    out = []
    for text, labels in samples:
        raw = {"text": text, field: labels}
        checked = task.check_labels(labels)
        for line in conv.record_lines(raw):
            rec = json.loads(line)
            chunk = json.loads(rec["instruction"])["schema"]
            rec["output"] = json.dumps(task.render_output(checked, chunk, text, schema), ensure_ascii=False)
            out.append(rec)
    return out


def gold_count(task_name: str) -> int:
    """How many gold tuples the samples hold (events for EE/EEA)."""
    task = get_task(task_name)
    _, _, samples = SAMPLES[task_name]
    return sum(len(task.gold(task.check_labels(labels))) for _, labels in samples)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
