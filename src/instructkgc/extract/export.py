"""Write extraction results as JSONL or as a graph: RDF Turtle (rdflib), GraphML (networkx), Neo4j CSVs.

All graph formats are built from one :class:`GraphModel`:

* ``Document`` nodes (one per input document) with ``mentions`` edges to what was found in them;
* entity nodes: one per (surface form, type) over all documents (relation ends without a type and event
  arguments have type ``""`` and the label ``Entity`` only);
* relations (RE, SPO) as edges typed by the relation name between entity nodes;
* events (EE, EEA, EET) as ``Event`` nodes, one per event and document, typed by the event type, with a
  ``trigger`` and one edge per argument, typed by the role;
* KG records as edges typed by the attribute from the entity to a ``Value`` node (one per value string; in RDF
  a literal).
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

from ie2instruction.io import atomic_writer, dumps

from ..utils import UsageError

FORMATS = ("jsonl", "turtle", "graphml", "neo4j")
GRAPH_EXTRA = "pip install 'instructkgc[graph]'"
DEFAULT_BASE_IRI = "http://example.org/instructkgc/"


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


@dataclass
class Node:
    id: str  # a path below the base IRI, e.g. "entity/person/Obama"
    kind: str  # Document, Entity, Event, Value
    name: str
    type: str = ""
    props: dict = field(default_factory=dict)


@dataclass
class Edge:
    source: str
    type: str
    target: str
    kind: str  # mentions, relation, role, attribute


def _q(s: str) -> str:
    return quote(s, safe="")


class GraphModel:
    """Nodes and edges collected from result lines (see the module docstring)."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}

    def node(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id

    def edge(self, source: str, etype: str, target: str, kind: str) -> None:
        self.edges.setdefault((source, etype, target), Edge(source, etype, target, kind))

    def entity(self, name: str, etype: str = "") -> str:
        path = f"entity/{_q(etype)}/{_q(name)}" if etype else f"entity/{_q(name)}"
        return self.node(Node(path, "Entity", name, etype))

    def add(self, result: dict) -> None:
        doc = self.node(Node(f"document/{_q(str(result['id']))}", "Document", str(result["id"])))
        mention = lambda target: self.edge(doc, "mentions", target, "mentions")  # noqa: E731
        for e in result.get("entities", ()):
            mention(self.entity(e["text"], e["type"]))
        for r in result.get("relations", ()):
            head = self.entity(r["head"], r.get("head_type", ""))
            tail = self.entity(r["tail"], r.get("tail_type", ""))
            mention(head)
            mention(tail)
            self.edge(head, r["relation"], tail, "relation")
        for n, ev in enumerate(result.get("events", ()), 1):
            event = self.node(Node(f"event/{_q(str(result['id']))}/{n}", "Event", ev["trigger"] or ev["type"],
                                   ev["type"], {"trigger": ev["trigger"]}))
            mention(event)
            for a in ev["arguments"]:
                self.edge(event, a["role"], self.entity(a["text"]), "role")
        for rec in result.get("records", ()):
            entity = self.entity(rec["entity"], rec["type"])
            mention(entity)
            value = self.node(Node(f"value/{_q(rec['value'])}", "Value", rec["value"]))
            self.edge(entity, rec["attribute"], value, "attribute")


# ---- RDF Turtle ----------------------------------------------------------------------------------------
def to_turtle(model: GraphModel, base_iri: str) -> str:
    """Entity types and event types as classes (``<base>type/T``), relations, roles and attributes as
    properties (``<base>relation/R``, ``<base>role/R``, ``<base>attribute/A``), names as ``rdfs:label``."""
    rdflib = _require("rdflib", "turtle")
    from rdflib.namespace import RDF, RDFS

    if not base_iri.endswith(("/", "#")):
        base_iri += "/"
    ns = rdflib.Namespace(base_iri)
    g = rdflib.Graph()
    g.bind("kg", ns)
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
    paths = {"relation": "relation/", "role": "role/", "attribute": "attribute/"}
    for e in model.edges.values():
        if e.kind == "mentions":
            g.add((iri(e.source), ns.mentions, iri(e.target)))
            continue
        pred = iri(paths[e.kind] + _q(e.type))
        g.add((pred, RDFS.label, Literal(e.type)))
        target = Literal(model.nodes[e.target].name) if e.kind == "attribute" else iri(e.target)
        g.add((iri(e.source), pred, target))
    return g.serialize(format="turtle")


# ---- GraphML ---------------------------------------------------------------------------------------------
def to_networkx(model: GraphModel):
    """A ``networkx.MultiDiGraph``: node attributes ``label`` (kind), ``name``, ``type``, ``trigger``; edge
    attributes ``type`` and ``kind``."""
    nx = _require("networkx", "graphml")
    g = nx.MultiDiGraph()
    for node in model.nodes.values():
        attrs = {"label": node.kind, "name": node.name, "type": node.type}
        attrs.update({k: v for k, v in node.props.items() if v is not None})
        g.add_node(node.id, **attrs)
    for e in model.edges.values():
        g.add_edge(e.source, e.target, type=e.type, kind=e.kind)
    return g


# ---- Neo4j bulk import -----------------------------------------------------------------------------------
NODE_HEADER = [":ID", "name", "type", "trigger", ":LABEL"]
REL_HEADER = [":START_ID", ":END_ID", ":TYPE"]


def _label(s: str) -> str:
    return s.replace(";", "_")  # ';' separates labels in the :LABEL column


def write_neo4j(model: GraphModel, directory: str) -> None:
    """``nodes.csv`` and ``relationships.csv`` for ``neo4j-admin database import full --nodes=nodes.csv
    --relationships=relationships.csv``; labels are the kind plus the entity / event type."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out / "nodes.csv") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(NODE_HEADER)
        for n in model.nodes.values():
            labels = [n.kind] + ([_label(n.type)] if n.type else [])
            w.writerow([n.id, n.name, n.type, n.props.get("trigger") or "", ";".join(labels)])
    with atomic_writer(out / "relationships.csv") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(REL_HEADER)
        for e in model.edges.values():
            w.writerow([e.source, e.target, e.type])


# ---- writers ---------------------------------------------------------------------------------------------
class JsonlWriter:
    """Streams result lines to ``path`` (``-``: stdout); the file appears only when all are written."""

    def __init__(self, path: str):
        self.path = path

    def write_all(self, results: Iterable[dict]) -> None:
        if self.path == "-":
            for r in results:
                sys.stdout.write(dumps(r) + "\n")
            sys.stdout.flush()
            return
        with atomic_writer(self.path) as f:
            for r in results:
                f.write(dumps(r) + "\n")


def write_results(results: Iterable[dict], output: str, fmt: str, base_iri: str = DEFAULT_BASE_IRI) -> None:
    """Write all results in ``fmt`` to ``output`` (a file, ``-`` for stdout, or a directory for neo4j)."""
    if fmt == "jsonl":
        JsonlWriter(output).write_all(results)
        return
    model = GraphModel()
    for r in results:
        model.add(r)
    if fmt == "neo4j":
        if output == "-":
            raise UsageError("--format neo4j writes a directory; give --output DIR")
        write_neo4j(model, output)
        return
    if fmt == "turtle":
        text = to_turtle(model, base_iri)
    elif fmt == "graphml":
        import networkx as nx

        text = "\n".join(nx.generate_graphml(to_networkx(model))) + "\n"
    else:
        raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if output == "-":
        sys.stdout.write(text)
        return
    with atomic_writer(output) as f:
        f.write(text)


def check_output(output: str, fmt: str) -> None:
    """Refuse unusable output paths before any work is done."""
    if fmt == "neo4j":
        if output == "-":
            raise UsageError("--format neo4j writes a directory; give --output DIR")
        if os.path.exists(output) and not os.path.isdir(output):
            raise UsageError(f"--output {output}: --format neo4j needs a directory, this is a file")
    elif output != "-" and os.path.isdir(output):
        raise UsageError(f"--output {output} is a directory; --format {fmt} writes a file")
