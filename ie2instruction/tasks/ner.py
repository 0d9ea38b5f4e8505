"""NER: entities typed by a schema of entity types. Answer: ``{type: [entity, ...]}``."""
from __future__ import annotations

from .base import SPAN, LabelTask, array_of, dedup_by, group, object_schema, str_list
from .items import Entity


class NER(LabelTask):
    name = "NER"
    result_field = "entities"
    extract_split_num = 6
    label_field = "entity"
    label_keys = ("entity", "entity_type")
    sentences = {
        "zh": "你是专门进行实体抽取的专家。请从input中抽取出符合schema定义的实体，不存在的实体类型返回空列表。请按照JSON字符串的格式回答。",
        "en": "You are an expert in named entity recognition. Please extract entities that match the schema definition from the input. Return an empty list if the entity type does not exist. Please respond in the format of a JSON string.",
    }

    def dedup(self, labels):
        return dedup_by(labels, lambda x: (x["entity"], x["entity_type"]))

    def positives(self, labels):
        return [x["entity_type"] for x in labels]

    def render_output(self, labels, schema_chunk, text, schema=None):
        by_type = group((x["entity_type"], x["entity"]) for x in labels)
        return {t: by_type.get(t, []) for t in schema_chunk}

    def gold(self, labels):
        return [(x["entity"], x["entity_type"]) for x in labels]

    def parse(self, answer, schema=None):
        if not isinstance(answer, dict):
            return None
        return [(e, t) for t, v in answer.items() for e in str_list(v)]

    def label_of(self, item):
        return item[1]

    def answer_schema(self, schema_chunk):
        return object_schema({t: array_of(SPAN) for t in schema_chunk})

    def make_items(self, tuples, locate):
        return [Entity(locate(entity, etype, None)) for entity, etype in tuples]
