"""EE: events with trigger and arguments for a schema of event types with their roles.

Answer: ``{event_type: [{"trigger": t, "arguments": {role: value | [values] | "NAN"}}, ...]}``.
"""
from __future__ import annotations

from .base import NAN, SPAN, SPAN_OR_NAN, Schema, Task, _unique, array_of, object_schema
from ..io import LabelError
from .items import Event


def event_problem(item, need_trigger: bool = False) -> str | None:
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    if not isinstance(item.get("event_type"), str):
        return "missing or non-string 'event_type'"
    if "event_trigger" in item and not isinstance(item["event_trigger"], str):
        return "'event_trigger' must be a string"
    if need_trigger and "event_trigger" not in item:
        return "missing 'event_trigger'"
    args = item.get("arguments", [])
    if not isinstance(args, list):
        return "'arguments' must be a list"
    for j, a in enumerate(args):
        if not isinstance(a, dict) or not isinstance(a.get("argument"), str) or not isinstance(a.get("role"), str):
            return f"'arguments'[{j}] must be an object with string 'argument' and 'role'"
    return None


def labelled_events(labels: list) -> dict[str, list[dict]]:
    """type -> [{"event_trigger", "arguments": {role: value or sorted [values]}}] as the answers state them.

    Events with neither trigger nor arguments are skipped, an empty trigger becomes ``NAN``, empty argument
    values are dropped, and several values of one role become a code-point sorted list.
    """
    out: dict[str, list[dict]] = {}
    for ev in labels:
        trigger = ev.get("event_trigger", "")
        args = ev.get("arguments", [])
        if trigger == "" and not args:
            continue
        values: dict[str, list[str]] = {}
        for a in args:
            if a["argument"] != "":
                values.setdefault(a["role"], [])
                if a["argument"] not in values[a["role"]]:
                    values[a["role"]].append(a["argument"])
        roles = {r: v[0] if len(v) == 1 else sorted(v) for r, v in values.items()}
        out.setdefault(ev["event_type"], []).append({"event_trigger": trigger or NAN, "arguments": roles})
    return out


def render_events(labels: list, schema_chunk: list, text: str) -> dict:
    """The gold answer for EE / EEA schema items, in the original's layout."""
    events = labelled_events(labels)
    out: dict[str, list] = {}
    for item in schema_chunk:
        wants_trigger = bool(item.get("trigger", True))
        answers = []
        for ev in events.get(item["event_type"], ()):
            args = {r: ev["arguments"].get(r, NAN) for r in item["arguments"]}
            if not any(r in ev["arguments"] for r in item["arguments"]):
                args = {}
            if wants_trigger:
                answers.append({"trigger": ev["event_trigger"], "arguments": args})
            elif args:
                answers.append({"arguments": args})
        out[item["event_type"]] = answers
    if schema_chunk and schema_chunk[-1].get("trigger", True):
        for answers in out.values():
            answers.sort(key=lambda a: text.find(a.get("trigger", "")))
    return out


class EE(Task):
    name = "EE"
    result_field = "events"
    label_field = "event"
    metric = "event"
    sentences = {
        "zh": "你是专门进行事件提取的专家。请从input中抽取出符合schema定义的事件，不存在的事件返回空列表，不存在的论元返回NAN，如果论元存在多值请返回列表。请按照JSON字符串的格式回答。",
        "en": "You are an expert in event extraction. Please extract events from the input that conform to the schema definition. Return an empty list for events that do not exist, and return NAN for arguments that do not exist. If an argument has multiple values, please return a list. Respond in the format of a JSON string.",
    }

    def label_problem(self, item):
        return event_problem(item)

    def train_items(self, labels, schema, sampler):
        pos_roles: dict[str, set[str]] = {}
        for ev in labels:
            pos_roles.setdefault(ev["event_type"], set()).update(a["role"] for a in ev.get("arguments", []))
        types = sampler.select(list(pos_roles), schema.types, len(schema.type_roles))
        if types is None:
            return None
        items = []
        for t in types:
            roles = schema.type_roles.get(t, [])
            if sampler.p == 0:
                chosen = list(roles)
            elif t in pos_roles:
                negatives = sorted(set(roles) - pos_roles[t])
                chosen = sampler.sample(negatives, len(roles), at_least_one=not pos_roles[t]) + sorted(pos_roles[t])
            else:
                chosen = sampler.sample(sorted(roles), len(roles), at_least_one=True)
            items.append((t, sampler.order(chosen)))
        return sampler.order(items, key=lambda x: x[0])

    def test_items(self, labels, schema):
        return [(t, sorted(roles)) for t, roles in schema.type_roles.items()]

    def schema_json(self, items):
        return [{"event_type": t, "trigger": True, "arguments": roles} for t, roles in items]

    def render_output(self, labels, schema_chunk, text, schema=None):
        return render_events(labels, schema_chunk, text)

    def schema_from_json(self, value):
        if isinstance(value, dict) and all(isinstance(v, list) and all(isinstance(r, str) for r in v)
                                           for v in value.values()):
            return Schema(types=list(value), type_roles={k: _unique(v) for k, v in value.items()})
        raise LabelError(f"{self.name}: expected a JSON object mapping each event type to its roles")

    # ---- evaluation -----------------------------------------------------------------------------------
    def gold(self, labels):
        out = []
        for ev in labels:
            trigger = ev.get("event_trigger", "")
            args = ev.get("arguments", [])
            if trigger == "" and not args:
                continue
            pairs = tuple((a.get("argument", ""), a.get("role", "")) for a in args if a.get("argument", "") != "")
            out.append((ev.get("event_type", ""), trigger or NAN, pairs))
        return out

    def parse(self, answer, schema=None):
        if not isinstance(answer, dict):
            return None
        out = []
        for etype, events in answer.items():
            for ev in events if isinstance(events, list) else ():
                if not isinstance(ev, dict):
                    continue
                trigger = ev.get("trigger", "")
                if not isinstance(trigger, str):
                    continue
                args = ev.get("arguments", {})
                pairs = []
                for role, value in args.items() if isinstance(args, dict) else ():
                    for v in value if isinstance(value, list) else [value]:
                        if isinstance(v, str) and v != NAN:
                            pairs.append((v, role))
                out.append((etype, trigger, tuple(pairs)))
        return out

    def label_of(self, item):
        return item[0]

    def answer_schema(self, schema_chunk):
        props = {}
        for item in schema_chunk:
            value = {"anyOf": [SPAN_OR_NAN, array_of(SPAN)]}
            event = {"trigger": SPAN_OR_NAN} if item.get("trigger", True) else {}
            event["arguments"] = object_schema({r: value for r in item["arguments"]})
            props[item["event_type"]] = array_of(object_schema(event))
        return object_schema(props)

    def make_items(self, tuples, locate):
        out = []
        for etype, trigger, args in tuples:
            trig = None if trigger in ("", NAN) else locate(trigger, etype, None)
            near = trig.start if trig is not None else None
            out.append(Event(etype, trig, [locate(value, role, near) for value, role in args]))
        return out
