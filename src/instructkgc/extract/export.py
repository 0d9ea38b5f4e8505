"""Write extraction results as JSONL, as a graph (RDF Turtle with rdflib, GraphML with networkx, Neo4j CSVs)
or as one offline HTML report (``report.py``).

All graph formats are built from one :class:`GraphModel`:

* ``Document`` nodes (one per input document) with ``mentions`` edges to what was found in them;
* entity nodes: one per entity over all documents. With entity resolution (``resolve.py``, the default)
  names of one entity ("Barack Obama", "Obama", "President Obama") are one node named by the canonical name
  and carrying the others as ``aliases``; without it (``--no_resolve``) one node per (surface form, type).
  Relation ends without a type and event arguments have type ``""`` and the label ``Entity`` only;
* relations (RE, SPO) as edges typed by the relation name between entity nodes;
* events (EE, EEA, EET) as ``Event`` nodes, one per event and document, typed by the event type, with a
  ``trigger`` and one edge per argument, typed by the role;
* KG records as edges typed by the attribute from the entity to a ``Value`` node (one per value string; in RDF
  a literal).

Text that XML 1.0 cannot hold (control characters other than tab / newline / carriage return, U+FFFE,
U+FFFF, lone surrogates) is replaced by U+FFFD in every graph format, so GraphML and Turtle always parse back.
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional
from urllib.parse import quote, urlsplit

from ie2instruction.io import atomic_writer, dumps
from ie2instruction.tasks.items import Event, Record, Relation, Result, Span

from ..utils import UsageError

FORMATS = ("jsonl", "turtle", "graphml", "neo4j", "html")
GRAPH_FORMATS = ("turtle", "graphml", "neo4j", "html")
GRAPH_EXTRA = "pip install 'instructkgc[graph]'"
DEFAULT_BASE_IRI = "http://example.org/instructkgc/"
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_IRI_BAD = re.compile(r'[\x00-\x20<>"{}|^`\\]')


def clean(text: str) -> str:
    """``text`` with every character XML 1.0 cannot hold replaced by U+FFFD."""
    return _XML_BAD.sub("\ufffd", text)


def _require(module: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--format {fmt} needs {module}: {GRAPH_EXTRA}") from None


def check_format(fmt: str) -> None:
    """Fail early (before the model runs) when the format's library is missing."""
    if fmt == "turtle":
        _require("rdflib", fmt)
    elif fmt == "graphml":
        _require("networkx", fmt)


def check_base_iri(base_iri: str) -> str:
    """The base IRI with a trailing ``/`` (unless it ends in ``#``); UsageError when it is not an absolute
    IRI that Turtle can hold."""
    parts = urlsplit(base_iri)
    if not parts.scheme or not (parts.netloc or parts.path) or _IRI_BAD.search(base_iri):
        raise UsageError(f"--base_iri {base_iri!r} is not an absolute IRI (like {DEFAULT_BASE_IRI}; no spaces "
                         "or <>\"{}|^`\\)")
    return base_iri if base_iri.endswith(("/", "#")) else base_iri + "/"


@dataclass
class Node:
    id: str  # a path below the base IRI, e.g. "entity/person/Obama"
    kind: str  # Document, Entity, Event, Value
    name: str
    type: str = ""
    props: dict = field(default_factory=dict)  # trigger (events), aliases (entities)


@dataclass
class Edge:
    source: str
    type: str
    target: str
    kind: str  # mentions, relation, role, attribute


def _q(s: str) -> str:
    return quote(clean(s), safe="")


def entity_path(name: str, etype: str = "") -> str:
    """The node id (IRI path) of an entity name."""
    return f"entity/{_q(etype)}/{_q(name)}" if etype else f"entity/{_q(name)}"


Canonical = Callable[[tuple[str, str]], tuple[str, str]]


class GraphModel:
    """Nodes and edges collected from results (see the module docstring). ``canonical`` maps an entity name
    ``(surface form, type)`` to the canonical name of its entity (identity without resolution);
    ``aliases`` maps a canonical name to its other surface forms."""

    def __init__(self, canonical: Optional[Canonical] = None,
                 aliases: Optional[Callable[[tuple[str, str]], list[str]]] = None):
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}
        self.canonical = canonical or (lambda n: n)
        self.aliases = aliases or (lambda n: [])
        self.mentions: dict[str, list[tuple[str, Span]]] = {}  # node id -> (document id, span) it was named by

    def node(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id

    def edge(self, source: str, etype: str, target: str, kind: str) -> None:
        self.edges.setdefault((source, etype, target), Edge(source, clean(etype), target, kind))

    def entity(self, span: Span, doc: str) -> str:
        name, etype = self.canonical((span.text, span.label))
        node = Node(entity_path(name, etype), "Entity", clean(name), clean(etype))
        aliases = self.aliases((name, etype))
        if aliases:
            node.props["aliases"] = [clean(a) for a in aliases]
        self.mentions.setdefault(node.id, []).append((doc, span))
        return self.node(node)

    def add(self, result: Result) -> None:
        rid = str(result.id)
        doc = self.node(Node(f"document/{_q(rid)}", "Document", clean(rid)))
        mention = lambda target: self.edge(doc, "mentions", target, "mentions")  # noqa: E731
        for n, item in enumerate(result.items, 1):
            if isinstance(item, Event):
                trigger = item.trigger.text if item.trigger else None
                event = self.node(Node(f"event/{_q(rid)}/{n}", "Event", clean(trigger or item.type),
                                       clean(item.type), {"trigger": clean(trigger) if trigger else None}))
                mention(event)
                for a in item.arguments:
                    self.edge(event, a.label, self.entity(Span(a.text, "", a.start, a.end, a.status), rid), "role")
            elif isinstance(item, Record):
                entity = self.entity(item.entity, rid)
                mention(entity)
                value = self.node(Node(f"value/{_q(item.value.text)}", "Value", clean(item.value.text)))
                self.edge(entity, item.attribute, value, "attribute")
            elif isinstance(item, Relation):
                head, tail = self.entity(item.head, rid), self.entity(item.tail, rid)
                mention(head)
                mention(tail)
                self.edge(head, item.relation, tail, "relation")
            else:
                mention(self.entity(item.span, rid))


def entity_mentions(results: Iterable[Result]) -> Iterator[tuple[str, str, str]]:
    """``(document id, name, type)`` of every entity mention (the input of entity resolution)."""
    for r in results:
        for item in r.items:
            for span in item.entities():
                yield str(r.id), span.text, span.label


def build_graph(results: list[Result], resolution=None) -> GraphModel:
    """The graph of ``results``, entities merged by ``resolution`` (a ``resolve.Resolution``) when given."""
    model = GraphModel(resolution.canonical, resolution.aliases) if resolution is not None else GraphModel()
    for r in results:
        model.add(r)
    return model


# ---- RDF Turtle ----------------------------------------------------------------------------------------
def to_rdf(model: GraphModel, base_iri: str):
    """An ``rdflib.Graph``: entity types and event types as classes (``<base>type/T``), relations, roles and
    attributes as properties (``<base>relation/R``, ``<base>role/R``, ``<base>attribute/A``), names as
    ``rdfs:label``; a resolved entity's other names as ``skos:altLabel`` and ``owl:sameAs`` to the IRIs
    those names have without resolution."""
    rdflib = _require("rdflib", "turtle")
    from rdflib.namespace import OWL, RDF, RDFS, SKOS

    base_iri = check_base_iri(base_iri)
    ns = rdflib.Namespace(base_iri)
    g = rdflib.Graph()
    g.bind("kg", ns)
    g.bind("skos", SKOS)
    g.bind("owl", OWL)
    for prefix in ("type", "relation", "role", "attribute"):
        g.bind(prefix, rdflib.Namespace(f"{base_iri}{prefix}/"))
    Literal, URIRef = rdflib.Literal, rdflib.URIRef
    iri = lambda path: URIRef(base_iri + path)  # noqa: E731
    declared: set[str] = set()

    def cls(name: str):
        c = iri("type/" + _q(name))
        if name not in declared:
            declared.add(name)
            g.add((c, RDF.type, RDFS.Class))
            g.add((c, RDFS.label, Literal(name)))
        return c

    for node in model.nodes.values():
        if node.kind == "Value":
            continue
        s = iri(node.id)
        g.add((s, RDF.type, ns[node.kind]))
        g.add((s, RDFS.label, Literal(node.name)))
        if node.type:
            g.add((s, RDF.type, cls(node.type)))
        if node.kind == "Event" and node.props.get("trigger"):
            g.add((s, ns.trigger, Literal(node.props["trigger"])))
        for alias in node.props.get("aliases", ()):
            g.add((s, SKOS.altLabel, Literal(alias)))
            g.add((s, OWL.sameAs, iri(entity_path(alias, node.type))))
    paths = {"relation": "relation/", "role": "role/", "attribute": "attribute/"}
    for e in model.edges.values():
        if e.kind == "mentions":
            g.add((iri(e.source), ns.mentions, iri(e.target)))
            continue
        pred = iri(paths[e.kind] + _q(e.type))
        g.add((pred, RDFS.label, Literal(e.type)))
        target = Literal(model.nodes[e.target].name) if e.kind == "attribute" else iri(e.target)
        g.add((iri(e.source), pred, target))
    return g


def to_turtle(model: GraphModel, base_iri: str) -> str:
    return to_rdf(model, base_iri).serialize(format="turtle")


# ---- GraphML ---------------------------------------------------------------------------------------------
def to_networkx(model: GraphModel):
    """A ``networkx.MultiDiGraph``: node attributes ``label`` (kind), ``name``, ``type``, ``trigger``,
    ``aliases`` (a JSON array of strings); edge attributes ``type`` and ``kind``."""
    import json

    nx = _require("networkx", "graphml")
    g = nx.MultiDiGraph()
    for node in model.nodes.values():
        attrs = {"label": node.kind, "name": node.name, "type": node.type}
        attrs.update({k: v for k, v in node.props.items() if v is not None})
        if "aliases" in attrs:
            attrs["aliases"] = json.dumps(attrs["aliases"], ensure_ascii=False)
        g.add_node(node.id, **attrs)
    for e in model.edges.values():
        g.add_edge(e.source, e.target, type=e.type, kind=e.kind)
    return g


def to_graphml(model: GraphModel) -> str:
    import networkx as nx

    return "\n".join(nx.generate_graphml(to_networkx(model))) + "\n"


# ---- Neo4j bulk import -----------------------------------------------------------------------------------
NODE_HEADER = [":ID", "name", "type", "trigger", "aliases:string[]", ":LABEL"]
REL_HEADER = [":START_ID", ":END_ID", ":TYPE"]


def _label(s: str) -> str:
    return s.replace(";", "_")  # ';' separates labels in :LABEL and array items in aliases:string[]


def _neo4j_nodes(model: GraphModel, f) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(NODE_HEADER)
    for n in model.nodes.values():
        labels = [n.kind] + ([_label(n.type)] if n.type else [])
        aliases = ";".join(_label(a) for a in n.props.get("aliases", ()))
        w.writerow([n.id, n.name, n.type, n.props.get("trigger") or "", aliases, ";".join(labels)])


def _neo4j_relationships(model: GraphModel, f) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(REL_HEADER)
    for e in model.edges.values():
        w.writerow([e.source, e.target, e.type])


def write_neo4j(model: GraphModel, directory: str) -> None:
    """``nodes.csv`` and ``relationships.csv`` for ``neo4j-admin database import full`` (README); labels are
    the kind plus the entity / event type. Both files are replaced together or not at all."""
    replace_together(Path(directory), {"nodes.csv": lambda f: _neo4j_nodes(model, f),
                                       "relationships.csv": lambda f: _neo4j_relationships(model, f)})


def replace_together(directory: Path, writers: dict[str, Callable]) -> None:
    """Write every file of ``writers`` (name -> function writing to an open text file) into ``directory``:
    all are written to temporary files first; then each replaces its target, and when one replacement fails
    the ones already made are undone (the old files come back from hard-linked backups)."""
    directory.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    backups: dict[str, str] = {}
    done: list[str] = []
    try:
        for name, write in writers.items():
            with atomic_writer(directory / f".{name}.new") as f:
                write(f)
            temps[name] = str(directory / f".{name}.new")
        for name in writers:
            target = directory / name
            if target.exists():
                backups[name] = str(directory / f".{name}.old")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backups[name])
                os.link(target, backups[name])
        for name in writers:
            os.replace(temps[name], directory / name)
            done.append(name)
    except BaseException:
        for name in done:  # undo: the old file back, or no file where there was none
            with contextlib.suppress(OSError):
                if name in backups:
                    os.replace(backups[name], directory / name)
                else:
                    os.unlink(directory / name)
        raise
    finally:
        for path in list(temps.values()) + list(backups.values()):
            with contextlib.suppress(OSError):
                os.unlink(path)


# ---- writers ---------------------------------------------------------------------------------------------
def write_jsonl(results: Iterable[Result], path: str) -> None:
    """Streams result lines to ``path`` (``-``: stdout); the file appears only when all are written."""
    if path == "-":
        for r in results:
            sys.stdout.write(dumps(r.to_json()) + "\n")
        sys.stdout.flush()
        return
    with atomic_writer(path) as f:
        for r in results:
            f.write(dumps(r.to_json()) + "\n")


def write_text(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    with atomic_writer(output) as f:
        f.write(text)


def write_graph(model: GraphModel, output: str, fmt: str, base_iri: str = DEFAULT_BASE_IRI) -> None:
    """Write ``model`` in a graph format to ``output`` (a file, ``-`` for stdout, or a directory for neo4j)."""
    if fmt == "neo4j":
        if output == "-":
            raise UsageError("--format neo4j writes a directory; give --output DIR")
        write_neo4j(model, output)
    elif fmt == "turtle":
        write_text(to_turtle(model, base_iri), output)
    elif fmt == "graphml":
        write_text(to_graphml(model), output)
    else:
        raise UsageError(f"unknown graph format {fmt!r}; choose one of {', '.join(GRAPH_FORMATS)}")


def write_results(results: Iterable[Result], output: str, fmt: str, base_iri: str = DEFAULT_BASE_IRI,
                  resolution=None) -> None:
    """Write all results in ``fmt`` (entities merged by ``resolution`` in the graph formats)."""
    if fmt == "jsonl":
        write_jsonl(results, output)
        return
    results = list(results)
    model = build_graph(results, resolution)
    if fmt == "html":
        from .report import render_report

        write_text(render_report(results, model, resolution), output)
        return
    write_graph(model, output, fmt, base_iri)


def check_output(output: str, fmt: str) -> None:
    """Refuse unusable output paths before any work is done."""
    if fmt == "neo4j":
        if output == "-":
            raise UsageError("--format neo4j writes a directory; give --output DIR")
        if os.path.exists(output) and not os.path.isdir(output):
            raise UsageError(f"--output {output}: --format neo4j needs a directory, this is a file")
    elif output != "-" and os.path.isdir(output):
        raise UsageError(f"--output {output} is a directory; --format {fmt} writes a file")
