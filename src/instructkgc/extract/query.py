"""``instructkgc query --store DIR 'SPARQL'``: answer a SPARQL query over a store made by ``instructkgc extract
--store DIR``, or export the stored graph (``--export turtle|graphml|neo4j|html --output PATH``).

SELECT results are printed as tab-separated lines with a header (``--json``: one JSON object per row); ASK
prints ``true`` / ``false``; CONSTRUCT / DESCRIBE print N-Triples. The prefixes ``kg:``, ``rdfs:``, ``skos:``,
``owl:``, ``type:``, ``relation:``, ``role:``, ``attribute:`` are declared (README: "The store").
"""
from __future__ import annotations

import argparse
import json
import sys

from ie2instruction.io import cli_errors

from ..utils import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instructkgc query", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="the folder given to instructkgc extract --store")
    p.add_argument("sparql", nargs="?", help="a SPARQL query (or - to read it from stdin)")
    p.add_argument("--json", action="store_true", help="SELECT rows as JSON lines")
    p.add_argument("--export", choices=["turtle", "graphml", "neo4j", "html"], default=None,
                   help="write the whole stored graph in this format to --output instead of querying")
    p.add_argument("--output", default="-", help="with --export: the file (a folder for neo4j; - for stdout)")
    return p


def _term(t) -> str:
    return "" if t is None else t.value


def run(args) -> int:
    from .export import check_output, write_graph, write_text
    from .store import open_store

    if (args.sparql is None) == (args.export is None):
        raise UsageError("give either a SPARQL query or --export FORMAT")
    if args.export:
        check_output(args.output, args.export)
    store = open_store(args.store, create=False)
    if args.export == "turtle":
        write_text(store.dump_turtle(), args.output)
        return 0
    if args.export:
        results, model = store.model()
        if args.export == "html":
            from .report import render_report

            write_text(render_report(results, model), args.output)
        else:
            write_graph(model, args.output, args.export, store.base)
        return 0
    sparql = sys.stdin.read() if args.sparql == "-" else args.sparql
    try:
        answer = store.query(sparql)
    except SyntaxError as err:
        raise UsageError(f"SPARQL: {str(err).splitlines()[0]}") from None
    if isinstance(answer, bool) or type(answer).__name__ == "QueryBoolean":
        print("true" if bool(answer) else "false")
    elif hasattr(answer, "variables"):
        names = [v.value for v in answer.variables]
        if not args.json:
            print("\t".join(names))
        for row in answer:
            values = [_term(row[n]) for n in names]
            print(json.dumps(dict(zip(names, values)), ensure_ascii=False) if args.json else
                  "\t".join(v.replace("\t", " ").replace("\n", " ") for v in values))
    else:
        for triple in answer:
            print(f"{triple} .")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors():
        return run(args)
