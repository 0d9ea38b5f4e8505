"""Knowledge graph over many documents: entity resolution (rules, gold-set quality, merge log, aliases in every
export), graph-writer safety, the incremental store with SPARQL queries, and the HTML report."""
import csv
import json
import os
import random
import re
import sys
from pathlib import Path

import pytest

from ie2instruction.tasks.items import Result
from instructkgc.extract.command import main
from instructkgc.extract.export import build_graph, to_networkx, to_turtle, write_results
from instructkgc.extract.outputs import resolve_results
from instructkgc.extract.resolve import Resolver, collect_names, normalise

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _resolve(names, **kw):
    """Names given as "text/type" strings, each mentioned once in its own document."""
    mentions = [(f"d{i}", *n.split("/")) for i, n in enumerate(names)]
    return Resolver(**kw).resolve(collect_names(mentions))


def _clusters(res):
    return sorted(sorted(f"{a}/{b}" for a, b in c) for c in res.clusters() if len(c) > 1)


def test_normalise_folds_case_accents_punctuation():
    assert normalise("  Zürich ") == normalise("ZURICH") == "zurich"
    assert normalise("Barack  Obama.") == "barack obama"
    assert normalise("ＩＢＭ") == "ibm"  # NFKC: full-width letters


def test_rules_merge_aliases_and_ambiguity_blocks():
    res = _resolve(["Barack Obama/person", "Obama/person", "Angela Merkel/person", "Chancellor Merkel/person",
                    "Merkel/person", "IBM/org", "International Business Machines Corp./org", "Apple Inc./org",
                    "Apple/org", "Apple Records/org", "U.N./org", "United Nations/org"])
    assert _clusters(res) == [
        ["Angela Merkel/person", "Chancellor Merkel/person", "Merkel/person"],
        ["Apple Inc./org", "Apple/org"],  # "Apple" is not "Apple Records": only last words make a surname
        ["Barack Obama/person", "Obama/person"],
        ["IBM/org", "International Business Machines Corp./org"],
        ["U.N./org", "United Nations/org"]]
    rules = {(m.a, m.rule) for m in res.merges}
    assert {("Obama", "token-subset"), ("IBM", "acronym"), ("Apple Inc.", "corporate-suffix")} <= rules
    # a second "... Obama" makes "Obama" ambiguous: no merge; two titles on one surname: no merge either
    res = _resolve(["Barack Obama/person", "Michelle Obama/person", "Obama/person", "President Obama/person",
                    "Mrs. Obama/person"])
    assert _clusters(res) == []


def test_types_block_merges_and_untyped_names_join_a_unique_typed_one():
    res = _resolve(["Amazon/org", "Amazon/location", "Jordan/location", "Michael Jordan/person", "Obama/",
                    "Obama/person", "Washington/", "Washington/person", "Washington/location"])
    assert _clusters(res) == [["Obama/", "Obama/person"]]
    assert res.canonical(("Obama", "")) == ("Obama", "person")


def test_fuzzy_threshold_and_numbers():
    res = _resolve(["Volodymyr Zelensky/person", "Volodymyr Zelenskyy/person", "Apollo 11/event",
                    "Apollo 12/event"])
    assert _clusters(res) == [["Volodymyr Zelensky/person", "Volodymyr Zelenskyy/person"]]
    assert res.merges[0].stage == "fuzzy" and res.merges[0].score >= 94
    assert _clusters(_resolve(["Volodymyr Zelensky/person", "Volodymyr Zelenskyy/person"], threshold=99)) == []
    assert _clusters(_resolve(["Volodymyr Zelensky/person", "Volodymyr Zelenskyy/person"],
                              last_stage="rule")) == []


def test_judge_decides_close_pairs_below_the_threshold():
    asked = []

    def judge(pairs):
        asked.extend(pairs)
        return [True] * len(pairs)

    res = _resolve(["Volkswagen/org", "Volkswagon/org", "Toyota/org"], judge=judge, judge_floor=80)
    assert asked == [(("Volkswagen", "org"), ("Volkswagon", "org"))]
    assert _clusters(res) == [["Volkswagen/org", "Volkswagon/org"]] and res.merges[-1].stage == "judge"


def test_resolution_is_deterministic_under_input_order():
    from resolve_bench import load_gold

    mentions, _ = load_gold()
    first = Resolver().resolve(collect_names(mentions))
    shuffled = list(mentions)
    random.Random(1).shuffle(shuffled)
    second = Resolver().resolve(collect_names(shuffled))
    assert {n: first.canonical(n) for n in first.info} == {n: second.canonical(n) for n in second.info}
    assert [m.as_dict() for m in first.merges] == [m.as_dict() for m in second.merges]


def test_gold_set_precision_and_recall():
    """The README's figures: precision >= 0.95, recall far above normalised exact match."""
    from resolve_bench import run

    rows = {r["stage"]: r for r in run(94.0)}
    assert rows["exact"]["P"] == 1.0 and rows["exact"]["R"] < 0.05
    assert rows["rule"]["P"] == 1.0 and rows["rule"]["R"] > 0.6
    assert rows["fuzzy"]["P"] >= 0.95 and rows["fuzzy"]["R"] > 0.75
    assert rows["fuzzy"]["wrong"] == [(("John Smith", "person"), ("Jon Smith", "person"))]


RESULTS = [Result.from_json(r) for r in [
    {"id": "a", "text": "Barack Obama met IBM staff.", "task": "NER", "entities": [
        {"text": "Barack Obama", "type": "person", "start": 0, "end": 12},
        {"text": "IBM", "type": "org", "start": 17, "end": 20}]},
    {"id": "b", "text": "Obama praised International Business Machines.", "task": "NER", "entities": [
        {"text": "Obama", "type": "person", "start": 0, "end": 5},
        {"text": "International Business Machines", "type": "org", "start": 14, "end": 45}]},
]]


def test_aliases_in_turtle_graphml_and_neo4j(tmp_path):
    import networkx as nx
    import rdflib
    from rdflib.namespace import OWL, SKOS

    resolution = resolve_results(RESULTS)
    base = "http://ex.org/kg/"
    g = rdflib.Graph().parse(data=to_turtle(build_graph(RESULTS, resolution), base), format="turtle")
    obama = rdflib.URIRef(base + "entity/person/Barack%20Obama")
    assert (obama, SKOS.altLabel, rdflib.Literal("Obama")) in g
    assert (obama, OWL.sameAs, rdflib.URIRef(base + "entity/person/Obama")) in g
    docs = {str(d).rsplit("/", 1)[1] for d in g.subjects(rdflib.URIRef(base + "mentions"), obama)}
    assert docs == {"a", "b"}  # one node for both documents

    write_results(RESULTS, str(tmp_path / "g.graphml"), "graphml", resolution=resolution)
    gm = nx.read_graphml(tmp_path / "g.graphml", force_multigraph=True)
    ibm = gm.nodes["entity/org/International%20Business%20Machines"]
    assert json.loads(ibm["aliases"]) == ["IBM"] and "entity/org/IBM" not in gm
    write_results(RESULTS, str(tmp_path / "neo"), "neo4j", resolution=resolution)
    with open(tmp_path / "neo" / "nodes.csv", encoding="utf-8") as f:
        rows = {r[":ID"]: r for r in csv.DictReader(f)}
    assert rows["entity/person/Barack%20Obama"]["aliases:string[]"] == "Obama"
    # without resolution: one node per surface form, as before
    assert sum(1 for n in to_networkx(build_graph(RESULTS)) if n.startswith("entity/person/")) == 2


HOSTILE = ["a\x00b", "esc\x1b[0m", "tab\tand\x0bvt", "line\nbreak", "\ufffe\uffff", "lone \ud800", "quote\"<&>'",
           "back\\slash", "\u2028sep\x85"]


def test_graphml_and_turtle_with_control_characters_parse_back(tmp_path):
    import networkx as nx
    import rdflib

    results = [Result.from_json({"id": f"d{i}\x01", "text": "x", "task": "RE", "relations": [
        {"head": name, "relation": name + " rel", "tail": f"tail {i}"}]}) for i, name in enumerate(HOSTILE)]
    model = build_graph(results, resolve_results(results))
    g = rdflib.Graph().parse(data=to_turtle(model, "http://ex.org/"), format="turtle")
    labels = {str(o) for o in g.objects(None, rdflib.RDFS.label)}
    assert "a\ufffdb" in labels and "line\nbreak" in labels and "quote\"<&>'" in labels
    write_results(results, str(tmp_path / "g.graphml"), "graphml")
    gm = nx.read_graphml(tmp_path / "g.graphml", force_multigraph=True)
    assert gm.number_of_nodes() == len(model.nodes)
    assert any(d.get("name") == "esc\ufffd[0m" for _, d in gm.nodes(data=True))


def test_graph_writers_property_never_fail(tmp_path):
    import networkx as nx
    import rdflib
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=5)), min_size=1, max_size=5))
    def check(names):
        r = Result.from_json({"id": "1", "text": "", "task": "NER", "entities": [
            {"text": n, "type": t} for n, t in names]})
        model = build_graph([r], resolve_results([r]))
        rdflib.Graph().parse(data=to_turtle(model, "http://ex.org/"), format="turtle")
        nx.parse_graphml(to_graphml(model), force_multigraph=True)

    from instructkgc.extract.export import to_graphml

    check()


@pytest.mark.parametrize("iri", ["not an iri", "http://ex.org/a b", "example.org/kg", "http://ex.org/<x>"])
def test_bad_base_iri_is_refused_before_the_model_loads(tmp_path, capsys, iri):
    src = tmp_path / "in.txt"
    src.write_text("Obama.\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["--task", "NER", "--schema", '["person"]', "--input", str(src), "--output", str(tmp_path / "g.ttl"),
              "--format", "turtle", "--base_iri", iri, "--model_name_or_path", str(tmp_path / "no-model")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--base_iri" in err
    assert not (tmp_path / "g.ttl").exists()


def test_neo4j_files_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "neo"
    write_results(RESULTS[:1], str(out), "neo4j")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.replace

    def failing(src, dst, *a, **kw):
        if str(dst).endswith("relationships.csv"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        write_results(RESULTS, str(out), "neo4j")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old pair, nothing else
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        write_results(RESULTS, str(fresh), "neo4j")
    assert list(fresh.iterdir()) == []


# ---- end to end with a planted engine: merge log, store, report ---------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


GOLD = {"Barack Obama": "person", "Obama": "person", "IBM": "org", "International Business Machines": "org",
        "Michelle Obama": "person", "Hawaii": "location"}


def _extract(tmp_path, tokenizer, docs, *extra, output="out.jsonl"):
    from test_extract import FakeEngine

    from instructkgc.extract.command import build_parser, run
    from instructkgc.template import get_template_and_fix_tokenizer

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs), encoding="utf-8")
    args = build_parser().parse_args(["--task", "NER", "--schema", '["person", "org", "location"]', "--input",
                                      str(src), "--output", str(tmp_path / output), "--model_name_or_path", "none",
                                      "--cutoff_len", "512", "--language", "en", "--no-constrained_decoding",
                                      *extra])
    template = get_template_and_fix_tokenizer("alpaca", tokenizer)
    return run(args, engine=FakeEngine(tokenizer, GOLD, 512), tokenizer=tokenizer, template=template)


def test_merge_log_names_stage_rule_evidence_documents(tmp_path, tokenizer):
    _extract(tmp_path, tokenizer, [("a", "Barack Obama visited IBM."),
                                   ("b", "Obama spoke at International Business Machines.")],
             "--format", "graphml", "--merge_log", str(tmp_path / "merges.jsonl"), output="g.graphml")
    log = [json.loads(x) for x in (tmp_path / "merges.jsonl").read_text(encoding="utf-8").splitlines()]
    by_rule = {m["rule"]: m for m in log}
    assert by_rule["acronym"]["a"] == "IBM" and by_rule["acronym"]["b"] == "International Business Machines"
    assert by_rule["token-subset"]["documents"] == {"Obama": ["a", "b"], "Barack Obama": ["a"]}
    assert all(m["stage"] == "rule" and m["evidence"] for m in log)


def _query(store, *argv, capsys):
    from instructkgc.extract.query import main as query

    assert query(["--store", str(store), *argv]) == 0
    return capsys.readouterr().out


def test_store_two_runs_accumulate_resolve_and_never_duplicate(tmp_path, tokenizer, capsys):
    store = tmp_path / "kg"
    _extract(tmp_path, tokenizer, [("a", "Barack Obama was born in Hawaii."), ("b", "IBM hired staff.")],
             "--store", str(store))
    capsys.readouterr()
    summary = _extract(tmp_path, tokenizer, [("b", "IBM hired staff."), ("c", "Obama met International Business "
                                                                              "Machines in Hawaii.")],
                       "--store", str(store))
    err = capsys.readouterr().err
    assert summary["documents"] == 1 and "1 documents already stored, skipped" in err
    ids = _query(store, "SELECT ?id WHERE { ?d kg:docId ?id } ORDER BY ?id", capsys=capsys)
    assert ids.split() == ["id", "a", "b", "c"]
    # "Obama" of run 2 is the stored "Barack Obama"; "International Business Machines" the stored "IBM"
    rows = _query(store, "--json", """SELECT ?name (COUNT(DISTINCT ?d) AS ?docs) WHERE {
        ?d kg:mentions ?e . ?e rdfs:label ?name } GROUP BY ?name HAVING (COUNT(DISTINCT ?d) >= 2) ORDER BY ?name""",
                  capsys=capsys)
    assert [json.loads(x) for x in rows.splitlines()] == [{"name": "Barack Obama", "docs": "2"},
                                                          {"name": "Hawaii", "docs": "2"},
                                                          {"name": "IBM", "docs": "2"}]
    aliases = _query(store, "SELECT ?alias WHERE { ?e rdfs:label 'Barack Obama' ; skos:altLabel ?alias }",
                     capsys=capsys)
    assert aliases.split() == ["alias", "Obama"]
    assert _query(store, "ASK { ?e skos:altLabel 'Obama' }", capsys=capsys) == "true\n"
    # exports from the store parse back and hold the same entities
    import networkx as nx
    import rdflib

    _query(store, "--export", "turtle", "--output", str(tmp_path / "s.ttl"), capsys=capsys)
    g = rdflib.Graph().parse(tmp_path / "s.ttl", format="turtle")
    assert len(set(g.subjects(rdflib.RDF.type, rdflib.URIRef("http://example.org/instructkgc/Document")))) == 3
    _query(store, "--export", "graphml", "--output", str(tmp_path / "s.graphml"), capsys=capsys)
    gm = nx.read_graphml(tmp_path / "s.graphml", force_multigraph=True)
    assert sorted(d["name"] for _, d in gm.nodes(data=True) if d["label"] == "Entity") == \
        ["Barack Obama", "Hawaii", "IBM"]
    # the same id with another text is refused before any work
    with pytest.raises(Exception, match="different text"):
        _extract(tmp_path, tokenizer, [("a", "Something else.")], "--store", str(store))


def test_query_errors_are_one_line(tmp_path, tokenizer, capsys):
    from instructkgc.extract.query import main as query

    with pytest.raises(SystemExit) as exc:
        query(["--store", str(tmp_path / "none"), "SELECT * WHERE { ?s ?p ?o }"])
    assert exc.value.code == 2 and "no store here" in capsys.readouterr().err
    store = tmp_path / "kg"
    _extract(tmp_path, tokenizer, [("a", "IBM hired staff.")], "--store", str(store))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        query(["--store", str(store), "SELECT WHERE {"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: SPARQL") and len(err.splitlines()) == 1


# ---- the HTML report ----------------------------------------------------------------------------------------
REPORT_DOCS = [("a", "Barack Obama was born in Hawaii. He later joined IBM."),
               ("b", "Obama visited International Business Machines with Michelle Obama.")]


def test_report_is_one_offline_file(tmp_path, tokenizer):
    _extract(tmp_path, tokenizer, REPORT_DOCS, "--format", "html", output="r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from anywhere
    assert "default-src 'none'" in page and "<script>" in page
    assert page.count('data-span="') >= 5 and "Merge log" in page
    assert "acronym" in page  # IBM; "Obama" stays alone beside "Michelle Obama"


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
                 if os.path.exists(p)), None)


LINES = {
    "RE": {"id": "1", "text": "Obama was born in Hawaii; Obama met Merkel.", "task": "RE", "relations": [
        {"head": "Obama", "head_start": 0, "head_end": 5, "relation": "born in", "tail": "Hawaii", "tail_start": 18,
         "tail_end": 24},
        {"head": "Obama", "head_start": 26, "head_end": 31, "relation": "met", "tail": "Merkel", "tail_start": 36,
         "tail_end": 42},
        {"head": "Obama", "relation": "knows", "tail": "Putin"}]},
    "EE": {"id": "2", "text": "The army attacked the town at dawn.", "task": "EE", "events": [
        {"type": "attack", "trigger": "attacked", "start": 9, "end": 17, "arguments": [
            {"text": "army", "role": "attacker", "start": 4, "end": 8},
            {"text": "town", "role": "target", "start": 22, "end": 26}]}]},
    "KG": {"id": "3", "text": "Ada Lovelace, born 1815 in London.", "task": "KG", "records": [
        {"entity": "Ada Lovelace", "type": "person", "start": 0, "end": 12, "attribute": "born", "value": "1815",
         "value_start": 19, "value_end": 23},
        {"entity": "Ada Lovelace", "type": "person", "start": 0, "end": 12, "attribute": "place", "value": "London",
         "value_start": 27, "value_end": 33}]},
}


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("task", ["NER", "RE", "EE", "KG"])
def test_report_in_headless_chromium(tmp_path, tokenizer, task):
    """A real browser loads the report: one highlight per grounded span, one drawn node per graph node."""
    import subprocess

    from instructkgc.extract.report import _ranges

    if task == "NER":
        _extract(tmp_path, tokenizer, REPORT_DOCS, "--format", "jsonl", "--report", str(tmp_path / "r.html"))
        results = [Result.from_json(json.loads(x)) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    else:
        results = [Result.from_json(LINES[task])]
        write_results(results, str(tmp_path / "r.html"), "html", resolution=resolve_results(results))
    model = build_graph(results, resolve_results(results))
    spans = sum(len(_ranges(r)) for r in results)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    url = (tmp_path / "r.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    status = re.search(r'<div id="status"[^>]*>', dom)
    assert status, dom[-2000:]
    nodes = int(re.search(r'data-nodes="(\d+)"', status.group(0)).group(1))
    marks = int(re.search(r'data-marks="(\d+)"', status.group(0)).group(1))
    assert nodes == len(model.nodes) and marks == spans and spans > 0
    assert dom.count('class="node"') == len(model.nodes)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, "--hide-scrollbars", "--window-size=1400,900", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_store_keeps_hostile_text_and_recognises_it_again(tmp_path):
    from instructkgc.extract.documents import Document
    from instructkgc.extract.store import open_store

    text = "Obama\x00 met \ud800 Merkel\x1b."
    r = Result.from_json({"id": "x\x01", "text": text, "task": "NER", "entities": [
        {"text": "Obama\x00", "type": "person", "start": 0, "end": 6}]})
    store = open_store(str(tmp_path / "kg"))
    assert store.add([r], store.resolve([r], Resolver())) > 0
    assert store.results()[0].text == text
    fresh, skipped = store.new_documents([Document("x\x01", text), Document("y", "new")])
    assert [d.id for d in fresh] == ["y"] and skipped == 1


def test_model_judge_asks_the_loaded_model(tokenizer):
    from instructkgc.extract.outputs import model_judge
    from instructkgc.template import get_template_and_fix_tokenizer

    class Engine:
        def generate(self, prompts, json_schemas=None):
            self.prompts = [tokenizer.decode(p) for p in prompts]
            return ["Yes, they are.", "no"]

    engine = Engine()
    judge = model_judge(engine, get_template_and_fix_tokenizer("alpaca", tokenizer), tokenizer)
    assert judge([(("Volkswagen", "org"), ("Volkswagon", "org")), (("Anna", ""), ("Anne", ""))]) == [True, False]
    assert 'Do "Volkswagen" and "Volkswagon" name the same org?' in engine.prompts[0]
    assert "the same entity?" in engine.prompts[1]
