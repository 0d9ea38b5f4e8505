"""instructkgc extract: windowing (with a deterministic fake engine), grounding, merging, export, bad input."""
import csv
import json
import re

import pytest

from instructkgc.extract.command import build_parser, main, run
from ie2instruction.tasks import get_task
from ie2instruction.tasks.items import Result, Span
from instructkgc.extract.export import GraphModel, to_networkx, to_turtle, write_results
from instructkgc.extract.ground import GroundStats, ground
from instructkgc.extract.merge import merge_items
from instructkgc.extract.windows import plan_windows, sentence_spans
from instructkgc.template import get_template_and_fix_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class FakeEngine:
    """Answers each prompt with the planted names that occur in it (it reads only its window), and checks
    that no prompt exceeds cutoff_len."""

    def __init__(self, tokenizer, gold: dict[str, str], cutoff_len: int):
        self.tokenizer, self.gold, self.cutoff_len = tokenizer, gold, cutoff_len
        self.prompts = 0

    def generate(self, prompts, json_schemas=None):
        out = []
        for ids in prompts:
            assert len(ids) <= self.cutoff_len
            self.prompts += 1
            seen = self.tokenizer.decode(ids)
            answer: dict[str, list[str]] = {}
            for name, etype in self.gold.items():
                if re.search(rf"(?<![A-Za-z0-9]){name}(?![0-9])", seen):
                    answer.setdefault(etype, []).append(name)
            out.append(json.dumps(answer))
        return out


def _args(tmp_path, **kw):
    args = build_parser().parse_args(["--task", "NER", "--schema", '["person", "location"]', "--input", "x",
                                      "--output", str(tmp_path / "out.jsonl"), "--model_name_or_path", "none"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _run_fake(tmp_path, tokenizer, text, gold, cutoff_len=160, overlap=24, **kw):
    src = tmp_path / "docs.txt"
    src.write_text(text + "\n", encoding="utf-8")
    template = get_template_and_fix_tokenizer("alpaca", tokenizer)
    engine = FakeEngine(tokenizer, gold, cutoff_len)
    kw.setdefault("language", "en")
    args = _args(tmp_path, input=str(src), cutoff_len=cutoff_len, window_overlap=overlap,
                 constrained_decoding=False, **kw)
    summary = run(args, engine=engine, tokenizer=tokenizer, template=template)
    result = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    return result, summary, engine


def _planted(n):
    names = {f"Agent{i:03d}": ("person" if i % 2 else "location") for i in range(n)}
    sentences = [f"On day {i} the envoy {name} crossed the quiet river near the old mill and wrote a long letter. "
                 f"Nothing else happened that afternoon, said the clerk." for i, name in enumerate(names)]
    return names, " ".join(sentences)


def test_long_document_windows_find_every_planted_entity(tmp_path, tokenizer):
    gold, text = _planted(40)
    assert len(tokenizer.encode(text)) > 10 * 160
    result, summary, engine = _run_fake(tmp_path, tokenizer, text, gold)
    found = {(e["text"], e["type"]) for e in result["entities"]}
    assert found == set(gold.items())
    assert result["stats"]["windows"] >= 10 and result["stats"]["parse_failures"] == 0
    for e in result["entities"]:
        assert text[e["start"]:e["end"]] == e["text"]
    assert [e["start"] for e in result["entities"]] == sorted(e["start"] for e in result["entities"])
    assert summary["windows"] == [result["stats"]["windows"]] and engine.prompts == summary["prompts"]


def test_run_on_text_without_sentence_ends_is_cut_with_overlap(tmp_path, tokenizer):
    gold = {f"Agent{i:03d}": "person" for i in range(30)}
    text = " ".join(f"word{i} and {name} and more filler words here" for i, name in enumerate(gold))
    result, _, _ = _run_fake(tmp_path, tokenizer, text, gold, cutoff_len=140, overlap=16)
    assert {e["text"] for e in result["entities"]} == set(gold)
    assert result["stats"]["windows"] > 3


def test_chinese_sentence_windows(tmp_path, tokenizer):
    gold = {f"Agent{i:03d}": "person" for i in range(12)}
    text = "".join(f"第{i}天，{name}在北京会见了来访的客人！他说：“很好。”" for i, name in enumerate(gold))
    result, _, _ = _run_fake(tmp_path, tokenizer, text, gold, cutoff_len=170, overlap=0, language="zh")
    assert {e["text"] for e in result["entities"]} == set(gold)
    assert result["stats"]["windows"] > 1


def test_windows_cover_text_respect_budget_and_split_at_sentences():
    text = "One two three. Four five six! 七八九。十一二？ Last words here"
    spans = sentence_spans(text)
    assert "".join(text[s:e] for s, e in spans) == text
    assert [text[s:e].strip() for s, e in spans] == ["One two three.", "Four five six!", "七八九。", "十一二？",
                                                     "Last words here"]
    assert sentence_spans("Pi is 3.14 today.") == [(0, 17)]
    count = lambda s: len(s.split()) or 1  # noqa: E731
    windows = plan_windows(text, 7, count, overlap=2)
    covered = set()
    for s, e in windows:
        assert count(text[s:e]) <= 7
        covered.update(range(s, e))
    assert all(i in covered for i, c in enumerate(text) if not c.isspace())
    assert len(windows) > 1 and plan_windows("   ", 5, count) == []


def test_exact_fit_check_shrinks_windows():
    text = "aa bb. cc dd. ee ff. gg hh."
    windows = plan_windows(text, 100, lambda s: len(s.split()), fits=lambda w: len(w) <= 13)
    assert all(len(text[s:e]) <= 13 for s, e in windows)
    assert [text[s:e] for s, e in windows] == ["aa bb. cc dd.", "ee ff. gg hh."]


def _ground(task, tuples, text, window, keep=False, stats=None):
    items = ground(get_task(task), tuples, text, window, keep, stats or GroundStats())
    return [i.to_json() for i in items]


def test_grounding_offsets_status_and_ungrounded():
    text = "Intro. Barack  Obama met Michelle Obama in Chicago. Chicago is big. IBM and ibm."
    stats = GroundStats()
    items = _ground("NER", [("Chicago", "location"), ("barack obama", "person"), ("Paris", "location"),
                            ("ibm", "org"), ("Ibm", "org")], text, (7, len(text)), stats=stats)
    assert items == [{"text": "Chicago", "type": "location", "start": 43, "end": 50, "grounding": "exact"},
                     {"text": "Barack  Obama", "type": "person", "start": 7, "end": 20, "grounding": "fuzzy"},
                     {"text": "ibm", "type": "org", "start": 76, "end": 79, "grounding": "exact"},
                     {"text": "IBM", "type": "org", "start": 68, "end": 71, "grounding": "case-folded"}]
    assert stats.ungrounded == 1
    kept = _ground("NER", [("Paris", "location")], text, (0, len(text)), keep=True)
    assert kept == [{"text": "Paris", "type": "location", "start": None, "end": None, "grounding": "ungrounded"}]
    # outside the window is not grounded: the model did not see it
    assert _ground("NER", [("Intro", "x")], text, (7, len(text))) == []
    rel = _ground("RE", [("Chicago", "near", "big")], text, (0, len(text)))[0]
    assert (rel["head_start"], rel["tail_start"]) == (43, 63)


def test_grounding_events_and_kg():
    text = "The army attacked the town at dawn."
    stats = GroundStats()
    ev = _ground("EE", [("attack", "attacked", (("army", "attacker"), ("city", "target"))),
                        ("attack", "NAN", ())], text, (0, len(text)), stats=stats)
    assert ev == [{"type": "attack", "trigger": "attacked", "start": 9, "end": 17, "grounding": "exact",
                   "arguments": [{"text": "army", "role": "attacker", "start": 4, "end": 8, "grounding": "exact"}]}]
    assert stats.ungrounded == 1
    rec = _ground("KG", [("unit", "army", "time", "dawn"), ("unit", "army", "size", "large")], text,
                  (0, len(text)))
    assert rec == [{"entity": "army", "type": "unit", "start": 4, "end": 8, "attribute": "time", "value": "dawn",
                    "value_start": 30, "value_end": 34, "grounding": "exact", "value_grounding": "exact"}]


def test_items_round_trip_through_json():
    from ie2instruction.tasks.items import item_from_json

    text = "The army attacked the town at dawn. Obama met Merkel."
    for task, tuples in [("NER", [("army", "unit")]), ("RE", [("Obama", "met", "Merkel")]),
                         ("SPO", [("person", "Obama", "met", "person", "Merkel")]),
                         ("EE", [("attack", "attacked", (("army", "attacker"),))]), ("EET", [("attacked", "attack")]),
                         ("KG", [("unit", "army", "time", "dawn")])]:
        items = ground(get_task(task), tuples, text, (0, len(text)), False, GroundStats())
        assert items and [item_from_json(i.to_json()) for i in items] == items, task


def test_merge_deduplicates_windows_and_chunks():
    from ie2instruction.tasks.items import Entity, Event

    ent = lambda t, ty, s: Entity(Span(t, ty, s, s + 1, "exact"))  # noqa: E731
    items = [ent("B", "t", 9), ent("A", "t", 5), ent("B", "t", 2), ent("B", "u", 9)]
    assert merge_items(items) == [ent("B", "t", 2), ent("A", "t", 5), ent("B", "u", 9)]
    events = [Event("e", Span("hit", "e", 3, 6, "exact"), [Span("x", "r", 0, 1, "exact")]),
              Event("e", Span("hit", "e", 3, 6, "exact"), [Span("y", "s", 8, 9, "exact")])]
    merged = merge_items(events)
    assert len(merged) == 1 and [a.text for a in merged[0].arguments] == ["x", "y"]


RESULTS = [Result.from_json(r) for r in [
    {"id": "d1", "text": "...", "task": "RE", "relations": [
        {"head": "Obama", "relation": "born in", "tail": "Hawaii"}]},
    {"id": "d2", "text": "...", "task": "NER", "entities": [{"text": "Obama", "type": "person"},
                                                             {"text": "Hawaii", "type": "location"}]},
    {"id": "d3", "text": "...", "task": "NER", "entities": [{"text": "Obama", "type": "person"}]},
    {"id": "d4", "text": "...", "task": "EE", "events": [
        {"type": "attack", "trigger": "attacked", "arguments": [{"text": "army", "role": "attacker"}]}]},
    {"id": "d5", "text": "...", "task": "KG", "records": [
        {"entity": "Obama", "type": "person", "attribute": "birthplace", "value": "Hawaii"},
        {"entity": "Obama", "type": "person", "attribute": "spouse", "value": "Michelle Obama"}]},
]]


def test_turtle_parses_back_with_rdflib():
    import rdflib
    from rdflib.namespace import RDF, RDFS

    model = GraphModel()
    for r in RESULTS:
        model.add(r)
    g = rdflib.Graph().parse(data=to_turtle(model, "http://ex.org/kg"), format="turtle")
    base = "http://ex.org/kg/"
    obama = rdflib.URIRef(base + "entity/person/Obama")
    assert (obama, RDF.type, rdflib.URIRef(base + "type/person")) in g
    assert (obama, RDFS.label, rdflib.Literal("Obama")) in g
    docs = set(g.subjects(rdflib.URIRef(base + "mentions"), obama))
    assert {str(d).rsplit("/", 1)[1] for d in docs} == {"d2", "d3", "d5"}  # one node across documents
    born = rdflib.URIRef(base + "relation/born%20in")
    assert (rdflib.URIRef(base + "entity/Obama"), born, rdflib.URIRef(base + "entity/Hawaii")) in g
    event = rdflib.URIRef(base + "event/d4/1")
    assert (event, RDF.type, rdflib.URIRef(base + "type/attack")) in g
    assert (event, rdflib.URIRef(base + "role/attacker"), rdflib.URIRef(base + "entity/army")) in g
    assert (obama, rdflib.URIRef(base + "attribute/birthplace"), rdflib.Literal("Hawaii")) in g


def test_graphml_reads_back_with_networkx(tmp_path):
    import networkx as nx

    out = tmp_path / "g.graphml"
    write_results(RESULTS, str(out), "graphml")
    g = nx.read_graphml(out, force_multigraph=True)
    assert g.nodes["entity/person/Obama"]["name"] == "Obama"
    assert g.nodes["entity/person/Obama"]["type"] == "person"
    types = {d["type"] for _, _, d in g.edges(data=True)}
    assert {"mentions", "born in", "attacker", "birthplace", "spouse"} <= types
    assert sum(1 for n in g if n.startswith("entity/person/Obama")) == 1
    assert g.number_of_nodes() == to_networkx(_model(RESULTS)).number_of_nodes()


def _model(results):
    model = GraphModel()
    for r in results:
        model.add(r)
    return model


def test_neo4j_csvs_have_neo4j_headers_and_consistent_ids(tmp_path):
    out = tmp_path / "neo"
    write_results(RESULTS, str(out), "neo4j")
    with open(out / "nodes.csv", encoding="utf-8") as f:
        nodes = list(csv.reader(f))
    with open(out / "relationships.csv", encoding="utf-8") as f:
        rels = list(csv.reader(f))
    assert nodes[0][0] == ":ID" and nodes[0][-1] == ":LABEL"
    assert rels[0] == [":START_ID", ":END_ID", ":TYPE"]
    ids = [row[0] for row in nodes[1:]]
    assert len(ids) == len(set(ids))
    assert all(r[0] in ids and r[1] in ids for r in rels[1:])
    labels = {row[0]: row[-1] for row in nodes[1:]}
    assert labels["entity/person/Obama"] == "Entity;person" and labels["event/d4/1"] == "Event;attack"


@pytest.mark.parametrize("case", ["empty", "blank", "utf8", "task", "schema_file", "schema_shape", "no_text",
                                  "inline_json"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    src = tmp_path / "in.txt"
    src.write_text("Obama was born in Hawaii.\n", encoding="utf-8")
    schema = '["person"]'
    task = "NER"
    if case == "empty":
        src.write_bytes(b"")
    elif case == "blank":
        src.write_text("\n  \n", encoding="utf-8")
    elif case == "utf8":
        src.write_bytes(b"ok line\n\xff\xfe bad\n")
    elif case == "task":
        task = "NERD"
    elif case == "schema_file":
        bad = tmp_path / "schema.json"
        bad.write_text('["a"]\n{"x": 1}\n{}\n', encoding="utf-8")
        schema = str(bad)
    elif case == "schema_shape":
        task = "EE"  # EE needs type -> roles
    elif case == "no_text":
        src = tmp_path / "in.jsonl"
        src.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    elif case == "inline_json":
        schema = '["person",'
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["--task", task, "--schema", schema, "--input", str(src), "--output", str(out),
              "--model_name_or_path", str(tmp_path / "no-model")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    expected = {"empty": "no documents", "blank": "no documents", "utf8": ":2: not UTF-8", "task": "unknown task",
                "schema_file": "schema.json:2:", "schema_shape": "EE", "no_text": "in.jsonl:2: missing 'text'",
                "inline_json": "invalid JSON"}[case]
    assert expected in err
    assert not out.exists()


def test_cutoff_too_small_for_schema_is_refused(tmp_path, tokenizer, capsys):
    with pytest.raises(Exception, match="leaves no room"):
        _run_fake(tmp_path, tokenizer, "Obama.", {"Obama": "person"}, cutoff_len=20)


def test_jsonl_input_keeps_fields_and_ids(tmp_path, tokenizer):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"id": "a", "text": "Agent001 went home.", "source": "s1"}\n{"text": "Agent002 too."}\n',
                   encoding="utf-8")
    template = get_template_and_fix_tokenizer("alpaca", tokenizer)
    engine = FakeEngine(tokenizer, {"Agent001": "person", "Agent002": "person"}, 512)
    run(_args(tmp_path, input=str(src), constrained_decoding=False), engine=engine, tokenizer=tokenizer,
        template=template)
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(x["id"], x.get("source")) for x in lines] == [("a", "s1"), ("2", None)]
    assert lines[1]["entities"] == [{"text": "Agent002", "type": "person", "start": 0, "end": 8, "grounding": "exact"}]


def test_missing_graph_library_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rdflib", None)
    src = tmp_path / "in.txt"
    src.write_text("Obama.\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["--task", "NER", "--schema", '["person"]', "--input", str(src), "--output", str(tmp_path / "g.ttl"),
              "--format", "turtle", "--model_name_or_path", str(tmp_path / "no-model")])
    assert exc.value.code == 2
    assert "pip install 'instructkgc[graph]'" in capsys.readouterr().err


def test_windows_property_cover_and_fit():
    from hypothesis import given, settings, strategies as st

    alphabet = st.sampled_from(list("ab c。.!?\n 词"))

    @settings(max_examples=150, deadline=None)
    @given(st.text(alphabet, max_size=200), st.integers(1, 12), st.integers(0, 8))
    def check(text, budget, overlap):
        count = len  # one token per character
        windows = plan_windows(text, budget, count, overlap)
        covered = set()
        for s, e in windows:
            assert 0 < e - s <= budget and not text[s].isspace() and not text[e - 1].isspace()
            covered.update(range(s, e))
        assert all(i in covered for i, c in enumerate(text) if not c.isspace())
        assert windows == sorted(windows)

    check()


def test_defaults_come_from_the_adapters_training_args(tmp_path):
    from instructkgc.extract.command import _fill_defaults

    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "instructkgc_args.json").write_text('{"template": "qwen", "cutoff_len": 300}', encoding="utf-8")
    args = build_parser().parse_args(["--task", "NER", "--schema", "[]", "--input", "x", "--output", "y",
                                      "--model_name_or_path", "m", "--checkpoint_dir", str(adapter)])
    _fill_defaults(args)
    assert (args.template, args.cutoff_len, args.model_name) == ("qwen", 300, "llama")
    args = build_parser().parse_args(["--task", "NER", "--schema", "[]", "--input", "x", "--output", "y",
                                      "--model_name_or_path", "m", "--template", "vanilla"])
    _fill_defaults(args)
    assert (args.template, args.cutoff_len) == ("vanilla", 512)
