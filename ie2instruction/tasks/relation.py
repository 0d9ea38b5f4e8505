"""RE: relation triples for a schema of relation names. Answer: ``{relation: [{"head", "tail"}, ...]}``."""
from __future__ import annotations

from .base import SPAN, LabelTask, array_of, dedup_by, group, object_schema
from .items import Relation


class RE(LabelTask):
    name = "RE"
    result_field = "relations"
    label_field = "relation"
    label_keys = ("head", "relation", "tail")
    sentences = {
        "zh": "你是专门进行关系抽取的专家。请从input中抽取出符合schema定义的关系三元组，不存在的关系返回空列表。请按照JSON字符串的格式回答。",
        "en": "You are an expert in relationship extraction. Please extract relationship triples that match the schema definition from the input. Return an empty list for relationships that do not exist. Please respond in the format of a JSON string.",
    }

    def dedup(self, labels):
        return dedup_by(labels, lambda x: (x["head"], x["relation"], x["tail"]))

    def universe(self, schema):
        return schema.roles

    def positives(self, labels):
        return [x["relation"] for x in labels]

    def render_output(self, labels, schema_chunk, text, schema=None):
        by_rel = group((x["relation"], {"head": x["head"], "tail": x["tail"]}) for x in labels)
        return {r: by_rel.get(r, []) for r in schema_chunk}

    def gold(self, labels):
        return [(x.get("head", ""), x.get("relation", ""), x.get("tail", "")) for x in labels]

    def parse(self, answer, schema=None):
        if not isinstance(answer, dict):
            return None
        out = []
        for rel, items in answer.items():
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict):
                    head, tail = item.get("head", ""), item.get("tail", "")
                    if isinstance(head, str) and isinstance(tail, str):
                        out.append((head, rel, tail))
        return out

    def label_of(self, item):
        return item[1]

    def answer_schema(self, schema_chunk):
        pair = object_schema({"head": SPAN, "tail": SPAN})
        return object_schema({r: array_of(pair) for r in schema_chunk})

    def make_items(self, tuples, locate):
        out = []
        for head, rel, tail in tuples:
            h = locate(head, "", None)
            out.append(Relation(h, rel, locate(tail, "", h.start)))
        return out
