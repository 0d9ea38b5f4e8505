"""An incremental knowledge-graph store: runs of ``instructkgc extract --store DIR`` accumulate in one embedded
RDF database (pyoxigraph, Oxigraph's Python binding) that ``instructkgc query --store DIR`` answers SPARQL over.

What a run adds: the graph of its new documents, in the vocabulary of ``--format turtle`` (``export.to_rdf``),
with entity names resolved against the entities already stored (a stored entity keeps its IRI and name; new
names of it become ``skos:altLabel``); and per document its id, the SHA-256 of its text and its result line
(``kg:docId``, ``kg:textSha256``, ``kg:result``). A document already stored (same id and text) is skipped
before the model runs; the same id with a different text is refused. The base IRI is fixed when the store is
made.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from ie2instruction.tasks.items import Result

from ..utils import UsageError
from .documents import Document
from .export import DEFAULT_BASE_IRI, GraphModel, _q, clean, build_graph, check_base_iri, entity_mentions, to_rdf
from .resolve import Resolution, Resolver, collect_names

STORE_EXTRA = "pip install 'instructkgc[store]'"
META = "instructkgc_store.json"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"
SKOS = "http://www.w3.org/2004/02/skos/core#"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


def _pyoxigraph():
    import importlib

    try:
        importlib.import_module("rdflib")
        return importlib.import_module("pyoxigraph")
    except ImportError as err:
        raise UsageError(f"--store needs {err.name}: {STORE_EXTRA}") from None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _lit(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a valid SPARQL string literal


class KGStore:
    """The store in ``directory`` (made on first use)."""

    def __init__(self, directory: str, base_iri: Optional[str] = None, create: bool = True):
        px = _pyoxigraph()
        path = Path(directory)
        meta = path / META
        if path.exists() and not path.is_dir():
            raise UsageError(f"--store {directory}: not a directory")
        if meta.is_file():
            stored = json.loads(meta.read_text(encoding="utf-8"))["base_iri"]
            if base_iri is not None and base_iri != DEFAULT_BASE_IRI and check_base_iri(base_iri) != stored:
                raise UsageError(f"--base_iri {base_iri} differs from the store's {stored}")
            self.base = stored
        elif not create:
            raise UsageError(f"--store {directory}: no store here (make one with instructkgc extract --store)")
        elif path.exists() and any(path.iterdir()):
            raise UsageError(f"--store {directory}: the folder is not empty and holds no store")
        else:
            self.base = check_base_iri(base_iri or DEFAULT_BASE_IRI)
            path.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"base_iri": self.base}) + "\n", encoding="utf-8")
        self.px = px
        self.store = px.Store(str(path / "oxigraph"))
        self.kg = self.base

    # ---- reading ------------------------------------------------------------------------------------------
    def query(self, sparql: str):
        """A SPARQL query with the prefixes ``kg:``, ``rdfs:``, ``skos:``, ``owl:``, ``type:``, ``relation:``,
        ``role:``, ``attribute:`` declared."""
        prefixes = {"kg": self.base, "rdfs": RDFS, "skos": SKOS, "owl": "http://www.w3.org/2002/07/owl#",
                    "type": self.base + "type/", "relation": self.base + "relation/",
                    "role": self.base + "role/", "attribute": self.base + "attribute/"}
        return self.store.query(sparql, prefixes=prefixes)

    def stored_documents(self) -> dict[str, str]:
        """Document id -> text hash."""
        rows = self.query("SELECT ?id ?h WHERE { ?d kg:docId ?id ; kg:textSha256 ?h }")
        return {row["id"].value: row["h"].value for row in rows}

    def results(self) -> list[Result]:
        rows = self.query("SELECT ?id ?r WHERE { ?d kg:docId ?id ; kg:result ?r } ORDER BY ?id")
        return [Result.from_json(json.loads(row["r"].value)) for row in rows]

    def entities(self) -> dict[tuple[str, str], list[str]]:
        """Stored entities: (name, type) -> their other names (aliases)."""
        rows = self.query("""SELECT ?e ?name ?t ?alias WHERE { ?e a kg:Entity ; rdfs:label ?name .
            OPTIONAL { ?e a ?c . ?c a rdfs:Class ; rdfs:label ?t } OPTIONAL { ?e skos:altLabel ?alias } }""")
        out: dict[tuple[str, str], set] = {}
        for row in rows:
            key = (row["name"].value, row["t"].value if row["t"] is not None else "")
            aliases = out.setdefault(key, set())
            if row["alias"] is not None:
                aliases.add(row["alias"].value)
        return {k: sorted(v) for k, v in out.items()}

    # ---- writing ------------------------------------------------------------------------------------------
    def new_documents(self, docs: Iterable[Document]) -> tuple[list[Document], int]:
        """The documents not stored yet, and how many were skipped as stored; UsageError for a stored id with
        another text."""
        stored = self.stored_documents()
        fresh, skipped = [], 0
        for d in docs:
            h = stored.get(clean(str(d.id)))
            if h is None:
                fresh.append(d)
            elif h == text_hash(d.text):
                skipped += 1
            else:
                raise UsageError(f"document {d.id} is already in the store with a different text; give it "
                                 "another id")
        return fresh, skipped

    def resolve(self, results: list[Result], resolver: Resolver) -> Resolution:
        """Resolve the entity names of ``results`` together with the stored entities (which keep their
        names)."""
        names = collect_names(entity_mentions(results))
        stored = self.entities()
        for (name, etype), aliases in stored.items():
            for n in [(name, etype)] + [(a, etype) for a in aliases]:
                info = names.setdefault(n, {"count": 0, "docs": set()})
                info["docs"].add("(store)")
        return resolver.resolve(names, fixed=stored)

    def add(self, results: list[Result], resolution: Optional[Resolution]) -> int:
        """Add ``results`` (their graph and their result lines) in one transaction; returns triples added."""
        if not results:
            return 0
        graph = to_rdf(build_graph(results, resolution), self.base)
        import rdflib

        for r in results:
            doc = rdflib.URIRef(self.base + "document/" + _q(str(r.id)))
            graph.add((doc, rdflib.URIRef(self.base + "docId"), rdflib.Literal(clean(str(r.id)))))
            graph.add((doc, rdflib.URIRef(self.base + "textSha256"), rdflib.Literal(text_hash(r.text))))
            graph.add((doc, rdflib.URIRef(self.base + "result"),
                       rdflib.Literal(json.dumps(r.to_json()))))  # ASCII: lone surrogates survive
        data = graph.serialize(format="nt")
        before = len(self.store)
        self.store.load(input=data.encode("utf-8"), format=self.px.RdfFormat.N_TRIPLES)  # one transaction
        self.store.flush()
        return len(self.store) - before

    def model(self) -> tuple[list[Result], GraphModel]:
        """The stored results and their graph, names mapped to the stored entities."""
        results = self.results()
        canonical: dict[tuple[str, str], tuple[str, str]] = {}
        by_name: dict[str, set] = {}
        entities = self.entities()
        for (name, etype), aliases in entities.items():
            for n in [name] + aliases:
                canonical[(n, etype)] = (name, etype)
                by_name.setdefault(n, set()).add((name, etype))

        def canon(n: tuple[str, str]) -> tuple[str, str]:
            if n in canonical:
                return canonical[n]
            matches = by_name.get(n[0], set())
            return next(iter(matches)) if len(matches) == 1 and not n[1] else n

        model = GraphModel(canon, lambda n: entities.get(n, []))
        for r in results:
            model.add(r)
        return results, model

    def dump_turtle(self) -> str:
        return self.store.dump(format=self.px.RdfFormat.TURTLE, from_graph=self.px.DefaultGraph()).decode("utf-8")


_OPEN: dict[str, KGStore] = {}


def open_store(directory: str, base_iri: Optional[str] = None, create: bool = True) -> KGStore:
    """One open :class:`KGStore` per folder and process (the database allows one open handle)."""
    key = os.path.realpath(directory)
    store = _OPEN.get(key)
    if store is None or not os.path.isfile(os.path.join(key, META)):
        store = _OPEN[key] = KGStore(directory, base_iri, create)
    elif base_iri is not None and base_iri != DEFAULT_BASE_IRI and check_base_iri(base_iri) != store.base:
        raise UsageError(f"--base_iri {base_iri} differs from the store's {store.base}")
    return store


def check_store(directory: str) -> None:
    """Before any work: the store library is there and the folder can hold a store."""
    _pyoxigraph()
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UsageError(f"--store {directory}: not a directory")
