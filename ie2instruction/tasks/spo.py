"""SPO: typed relation triples; the schema lists ``subject_type_predicate_object_type`` strings.

Answer: ``{predicate: [{"subject", "object"}, ...]}`` — keyed by the bare predicate, as the released models
were trained. Unlike the original, one instruction never asks two schema items that share a predicate (they
would overwrite each other's answers), so each answer key maps back to exactly one typed schema item.
"""
from __future__ import annotations

from .base import SPAN, LabelTask, Schema, array_of, dedup_by, group, object_schema
from .items import Relation
from .relation import RE


def spo_string(item: dict) -> str:
    return f"{item['head_type']}_{item['relation']}_{item['tail_type']}"


def split_spo(text: str) -> tuple[str, str, str]:
    """``s_p_o`` -> (subject_type, predicate, object_type): first piece, middle pieces, last piece."""
    parts = text.split("_")
    if len(parts) < 3:
        return "", text, ""
    return parts[0], "_".join(parts[1:-1]), parts[-1]


def _item(triple: tuple[str, str, str]) -> dict:
    return {"subject_type": triple[0], "predicate": triple[1], "object_type": triple[2]}


class SPO(LabelTask):
    name = "SPO"
    result_field = "relations"
    label_field = "relation"
    label_keys = ("head", "head_type", "relation", "tail", "tail_type")
    parse_uses_schema = True  # answer keys are bare predicates; the chunk's schema gives their types
    sentences = RE.sentences  # the original asks SPO with the RE sentence

    def __init__(self):
        self._known: dict[str, tuple[str, str, str]] = {}

    def dedup(self, labels):
        # types are part of the triple (the original ignored them)
        labels = dedup_by(labels, lambda x: (x["head_type"], x["head"], x["relation"], x["tail_type"], x["tail"]))
        for x in labels:  # remember how label strings split, so types containing "_" survive
            self._known[spo_string(x)] = (x["head_type"], x["relation"], x["tail_type"])
        return labels

    def positives(self, labels):
        return [spo_string(x) for x in labels]

    def triple(self, text: str) -> tuple[str, str, str]:
        return self._known.get(text) or split_spo(text)

    def schema_json(self, items):
        return [_item(self.triple(s)) for s in items]

    def split(self, items, n):
        """Chunks as usual, then any chunk asking one predicate twice is split so each asks it once."""
        out = []
        for chunk in super().split(items, n):
            parts: list[list[str]] = []
            for s in chunk:
                pred = self.triple(s)[1]
                for part in parts:
                    if all(self.triple(o)[1] != pred for o in part):
                        part.append(s)
                        break
                else:
                    parts.append([s])
            out.extend(parts or [[]])
        return out

    def render_output(self, labels, schema_chunk, text, schema=None):
        by_spo = group(((x["head_type"], x["relation"], x["tail_type"]), {"subject": x["head"], "object": x["tail"]})
                       for x in labels)
        out = {}
        for item in schema_chunk:
            key = (item["subject_type"], item["predicate"], item["object_type"])
            out.setdefault(item["predicate"], []).extend(by_spo.get(key, []))
        return out

    def schema_from_json(self, value):
        schema = super().schema_from_json(value)
        return Schema(types=schema.types)

    def gold(self, labels):
        return [(x.get("head_type", ""), x.get("head", ""), x.get("relation", ""), x.get("tail_type", ""),
                 x.get("tail", "")) for x in labels]

    def parse(self, answer, schema=None):
        """Typed triples; the types come from the instruction's schema items for each predicate."""
        if not isinstance(answer, dict):
            return None
        types = {}
        for item in schema or ():
            if isinstance(item, dict):
                types.setdefault(item.get("predicate"), (item.get("subject_type", ""), item.get("object_type", "")))
        out = []
        for pred, items in answer.items():
            s_type, o_type = types.get(pred, ("", ""))
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict):
                    s, o = item.get("subject", ""), item.get("object", "")
                    if isinstance(s, str) and isinstance(o, str):
                        out.append((s_type, s, pred, o_type, o))
        return out

    def label_of(self, item):
        return f"{item[0]}_{item[2]}_{item[3]}"

    def answer_schema(self, schema_chunk):
        pair = object_schema({"subject": SPAN, "object": SPAN})
        return object_schema({item["predicate"]: array_of(pair) for item in schema_chunk})

    def make_items(self, tuples, locate):
        out = []
        for s_type, subj, pred, o_type, obj in tuples:
            h = locate(subj, s_type, None)
            out.append(Relation(h, pred, locate(obj, o_type, h.start), typed=True))
        return out
