"""KG: entity records with attributes, for a schema of entity types with their attributes.

Answer: ``{entity_type: {entity: {attribute: value | [values]}}}``. Labels are ``{"head", "relation", "tail"}``
(optionally ``head_type``). Unlike the original, which put every entity under the schema's first type and took
its attributes from line 2, each entity goes under its ``head_type`` or else the type whose attributes cover
most of its relations, and every schema type is asked.
"""
from __future__ import annotations

from .base import STRING, Schema, Task, _unique, array_of, object_schema
from ..io import LabelError
from .items import Record

DROPPED_VALUES = ("无",)


def _type_of(head: str, relations: list[str], hint: str | None, schema: Schema) -> str:
    if hint in schema.type_roles:
        return hint
    best, score = next(iter(schema.type_roles), ""), -1
    for t, attrs in schema.type_roles.items():
        s = len(set(relations) & set(attrs))
        if s > score:
            best, score = t, s
    return best


def entities_by_type(labels: list, schema: Schema) -> dict[str, list[str]]:
    relations: dict[str, list[str]] = {}
    hints: dict[str, str] = {}
    for x in labels:
        relations.setdefault(x["head"], []).append(x["relation"])
        if isinstance(x.get("head_type"), str):
            hints.setdefault(x["head"], x["head_type"])
    out: dict[str, list[str]] = {}
    for head, rels in relations.items():
        out.setdefault(_type_of(head, rels, hints.get(head), schema), []).append(head)
    return out


class KG(Task):
    name = "KG"
    result_field = "records"
    extract_split_num = 1
    label_field = "relation"
    label_keys = ("head", "relation", "tail")
    sentences = {
        "zh": "你是一个图谱实体知识结构化专家。根据输入实体类型(entity type)的schema描述，从文本中抽取出相应的实体实例和其属性信息，不存在的属性不输出, 属性存在多值就返回列表，并输出为可解析的json格式。",
        "en": "You are an expert in structured knowledge systems for graph entities. Based on the schema description of the input entity type, you extract the corresponding entity instances and their attribute information from the text. Attributes that do not exist should not be output. If an attribute has multiple values, a list should be returned. The results should be output in a parsable JSON format.",
    }

    def universe(self, schema):
        return list(schema.type_roles)

    def train_items(self, labels, schema, sampler):
        heads = entities_by_type(labels, schema)
        pos_attrs = {t: {x["relation"] for x in labels if x["head"] in set(hs)} for t, hs in heads.items()}
        types = sampler.select(list(heads), list(schema.type_roles), len(schema.type_roles))
        if types is None:
            return None
        items = []
        for t in types:
            attrs = schema.type_roles.get(t, [])
            pos = pos_attrs.get(t, set())
            if sampler.p == 0:
                chosen = sorted(pos)
            else:
                negatives = sorted(set(attrs) - pos)
                chosen = sampler.sample(negatives, len(attrs), at_least_one=not pos) + sorted(pos)
            items.append((t, sampler.order(chosen)))
        return sampler.order(items, key=lambda x: x[0])

    def test_items(self, labels, schema):
        return [(t, sorted(attrs)) for t, attrs in schema.type_roles.items()]

    def schema_json(self, items):
        return [{"entity_type": t, "attributes": attrs} for t, attrs in items]

    def render_output(self, labels, schema_chunk, text, schema=None):
        if schema is None:
            schema = Schema(type_roles={i["entity_type"]: i["attributes"] for i in schema_chunk})
        heads = entities_by_type(labels, schema)
        tails: dict[str, dict[str, list[str]]] = {}
        for x in labels:
            tails.setdefault(x["head"], {}).setdefault(x["relation"], []).append(x["tail"])
        out = {}
        for item in schema_chunk:
            records = {}
            for head in sorted(heads.get(item["entity_type"], []), key=text.find):
                attrs = {}
                for a in item["attributes"]:
                    if a in tails[head]:
                        values = sorted(tails[head][a], key=text.find)
                        attrs[a] = values[0] if len(values) == 1 else values
                records[head] = attrs
            out[item["entity_type"]] = records
        return out

    def schema_from_json(self, value):
        if isinstance(value, dict) and all(isinstance(v, list) and all(isinstance(r, str) for r in v)
                                           for v in value.values()):
            return Schema(roles=_unique(a for v in value.values() for a in v),
                          type_roles={k: _unique(v) for k, v in value.items()})
        raise LabelError("KG: expected a JSON object mapping each entity type to its attributes")

    # ---- evaluation: (entity, attribute, value) triples on both sides --------------------------------------
    def gold(self, labels):
        return [(x.get("head", ""), x.get("relation", ""), x.get("tail", "")) for x in labels]

    def parse(self, answer, schema=None):
        if not isinstance(answer, dict):
            return None
        out = []
        for records in answer.values():
            for entity, attrs in records.items() if isinstance(records, dict) else ():
                for attr, value in attrs.items() if isinstance(attrs, dict) else ():
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, str) and v not in DROPPED_VALUES and v.lower() != "nan":
                            out.append((entity, attr, v))
        return out

    def label_of(self, item):
        return item[1]

    def answer_schema(self, schema_chunk):
        props = {}
        for item in schema_chunk:
            value = {"anyOf": [STRING, array_of(STRING)]}
            record = object_schema({a: value for a in item["attributes"]}, required=False)
            props[item["entity_type"]] = {"type": "object", "additionalProperties": record,
                                          "maxProperties": 20}
        return object_schema(props)

    def extract_tuples(self, answer, schema_chunk):
        """``(type, entity, attribute, value)``: ``parse`` per entity type, the type kept in front."""
        if not isinstance(answer, dict):
            return None
        out = []
        for etype, records in answer.items():
            out.extend((etype,) + t for t in self.parse({etype: records}, schema=schema_chunk) or ())
        return out

    def make_items(self, tuples, locate):
        out = []
        for etype, entity, attr, value in tuples:
            e = locate(entity, etype, None)
            out.append(Record(e, attr, locate(value, "", e.start)))
        return out
