"""EEA: event arguments, given the event types (and, in training, their triggers).

Answer as EE: ``{event_type: [{"trigger": t, "arguments": {role: value}}, ...]}``.
"""
from __future__ import annotations

from .ee import EE


class EEA(EE):
    name = "EEA"
    sentences = {
        "zh": "你是专门进行事件论元提取的专家。请从input中抽取出符合schema定义的事件论元及论元角色，不存在的论元返回NAN或空字典，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
        "en": "You are an expert in event argument extraction. Please extract event arguments and their roles from the input that conform to the schema definition, which already includes event trigger words. If an argument does not exist, return NAN or an empty dictionary. Please respond in the format of a JSON string.",
    }

    def train_items(self, labels, schema, sampler):
        """One item per labelled event type with ALL its triggers (the original truncated them) and sampled roles."""
        triggers: dict[str, list[str]] = {}
        for ev in labels:
            triggers.setdefault(ev["event_type"], []).append(ev.get("event_trigger", ""))
        if not triggers:
            return None
        items = []
        for t, trigs in triggers.items():
            roles = sorted(schema.type_roles.get(t, []))
            items.append((t, trigs, sampler.order(sampler.sample(roles, len(roles), at_least_one=True))))
        return sampler.order(items, key=lambda x: x[0])

    def schema_key(self, labels, split):
        return frozenset(ev["event_type"] for ev in labels or ()) if split == "test" else None

    def test_items(self, labels, schema):
        """The labelled event types; every type of the schema when the record has none (or no labels)."""
        types = sorted({ev["event_type"] for ev in labels or ()}) or list(schema.type_roles)
        return [(t, sorted(schema.type_roles.get(t, []))) for t in types]

    def schema_json(self, items):
        return [{"event_type": i[0], "trigger": i[1], "arguments": i[2]} if len(i) == 3
                else {"event_type": i[0], "arguments": i[1]} for i in items]
