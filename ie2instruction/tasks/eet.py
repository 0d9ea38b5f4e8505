"""EET: event types and their trigger words. Answer: ``{event_type: [trigger, ...]}``."""
from __future__ import annotations

from .base import NAN, SPAN, LabelTask, array_of, group, object_schema, str_list
from .items import Event


class EET(LabelTask):
    name = "EET"
    result_field = "events"
    label_field = "event"
    label_keys = ("event_trigger", "event_type")
    sentences = {
        "zh": "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件类型及事件触发词，不存在的事件返回空列表。请按照JSON字符串的格式回答。",
        "en": "You are an expert in event extraction. Please extract event types and event trigger words from the input that conform to the schema definition. Return an empty list for non-existent events. Please respond in the format of a JSON string.",
    }

    def positives(self, labels):
        return [x["event_type"] for x in labels]

    def render_output(self, labels, schema_chunk, text, schema=None):
        # duplicates kept, as the released data has them (two events with the same trigger word)
        by_type = group((x["event_type"], x["event_trigger"]) for x in labels)
        return {t: by_type.get(t, []) for t in schema_chunk}

    def gold(self, labels):
        return [(x.get("event_trigger", ""), x.get("event_type", "")) for x in labels]

    def parse(self, answer, schema=None):
        if not isinstance(answer, dict):
            return None
        return [(trigger, t) for t, v in answer.items() for trigger in str_list(v)]

    def label_of(self, item):
        return item[1]

    def answer_schema(self, schema_chunk):
        return object_schema({t: array_of(SPAN) for t in schema_chunk})

    def make_items(self, tuples, locate):
        return [Event(etype, None if trigger in ("", NAN) else locate(trigger, etype, None))
                for trigger, etype in tuples]
