"""What ``instructkgc extract`` does with its results besides the JSONL: entity resolution (``resolve.py``),
the merge log, the HTML report (``report.py``) and the incremental store (``store.py``).

Its flags are added by :func:`add_arguments`, checked before the model loads by :func:`check`, and
:func:`write` writes every output. With ``--store DIR`` the graph formats and the report show the whole store
(this run's documents added to what was there); ``--format jsonl`` writes this run's results.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Iterable, Optional

from ie2instruction.io import atomic_writer, dumps
from ie2instruction.tasks.items import Result

from ..utils import UsageError
from .export import (GRAPH_EXTRA, GRAPH_FORMATS, build_graph, check_base_iri, entity_mentions, write_graph,
                     write_jsonl, write_text)
from .resolve import DEFAULT_JUDGE_FLOOR, DEFAULT_THRESHOLD, Judge, Resolution, Resolver, collect_names


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("knowledge graph: entity resolution, report, store")
    g.add_argument("--no_resolve", action="store_true",
                   help="keep one graph node per (surface form, type): no entity resolution")
    g.add_argument("--fuzzy_threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="entity resolution: rapidfuzz similarity (0-100) at which two names merge (default 94)")
    g.add_argument("--resolve_judge", action="store_true",
                   help="entity resolution: ask the model about pairs just below --fuzzy_threshold")
    g.add_argument("--merge_log", default=None, help="write every entity merge as JSONL to this file")
    g.add_argument("--report", default=None, help="also write the HTML report to this file")
    g.add_argument("--store", default=None,
                   help="accumulate runs in an RDF store in this folder (pyoxigraph); query it with "
                        "instructkgc query --store DIR")


def check(args) -> None:
    """Refuse unusable flags before any work is done."""
    args.base_iri = check_base_iri(args.base_iri)
    if not 0 <= args.fuzzy_threshold <= 100:
        raise UsageError(f"--fuzzy_threshold must be 0-100, got {args.fuzzy_threshold:g}")
    for flag in ("merge_log", "report"):
        path = getattr(args, flag)
        if path is not None and (path == "-" or os.path.isdir(path)):
            raise UsageError(f"--{flag} {path}: give a file path")
    if args.store is not None:
        from .store import check_store

        check_store(args.store)
    if resolving(args) and importlib.util.find_spec("rapidfuzz") is None:
        raise UsageError(f"entity resolution needs rapidfuzz: {GRAPH_EXTRA} (or --no_resolve)")


def skip_stored(args, docs: list) -> tuple[list, dict]:
    """With ``--store``: the documents not stored yet (a stored id with another text is refused)."""
    if args.store is None:
        return docs, {}
    from .store import open_store

    fresh, skipped = open_store(args.store, args.base_iri).new_documents(docs)
    return fresh, {"skipped": skipped}


def resolve_results(results: list[Result], resolver: Optional[Resolver] = None) -> Resolution:
    """Entity resolution over all entity mentions of ``results``."""
    return (resolver or Resolver()).resolve(collect_names(entity_mentions(results)))


def resolving(args) -> bool:
    return not args.no_resolve and (args.format in GRAPH_FORMATS or args.report or args.store or args.merge_log)


def model_judge(engine, template, tokenizer, system: Optional[str] = None) -> Judge:
    """The loaded model as judge: "Are X and Y the same T?", yes when the answer starts with yes (or 是)."""

    def judge(pairs):
        prompts = []
        for (a, ta), (b, tb) in pairs:
            kind = ta or tb or "entity"
            query = (f'Do "{a}" and "{b}" name the same {kind}? Answer yes or no.')
            prompts.append(template.encode_oneturn(tokenizer, query, "", system)[0])
        answers = engine.generate(prompts, None)
        return [getattr(x, "text", x).strip().lower().startswith(("yes", "是")) for x in answers]

    return judge


def write(args, results: Iterable[Result], judge: Optional[Judge] = None) -> dict:
    """Write ``--output`` in ``--format``, and ``--merge_log``, ``--report``, ``--store``; returns counts for
    the summary."""
    resolver = Resolver(args.fuzzy_threshold, judge if args.resolve_judge else None, DEFAULT_JUDGE_FLOOR)
    if args.format == "jsonl" and not (args.report or args.store or args.merge_log):  # stream the lines
        write_jsonl(results, args.output)
        return {}
    results = list(results)
    info: dict = {}
    resolution: Optional[Resolution] = None
    if args.store is not None:
        from .store import open_store

        store = open_store(args.store, args.base_iri)
        if resolving(args):
            resolution = store.resolve(results, resolver)
        info["triples_added"] = store.add(results, resolution)
        all_results, model = store.model()
    else:
        if resolving(args):
            resolution = resolve_results(results, resolver)
        all_results, model = results, build_graph(results, resolution)
    if args.format == "jsonl":
        write_jsonl(results, args.output)
    elif args.format == "html":
        write_text(_report(all_results, model, resolution), args.output)
    elif args.store is not None and args.format == "turtle":
        write_text(store.dump_turtle(), args.output)
    else:
        write_graph(model, args.output, args.format, args.base_iri)
    if args.report:
        write_text(_report(all_results, model, resolution), args.report)
    if resolution is not None:
        info["merges"] = len(resolution.merges)
        if args.merge_log:
            with atomic_writer(args.merge_log) as f:
                for m in resolution.merges:
                    f.write(dumps(m.as_dict()) + "\n")
    return info


def _report(results, model, resolution) -> str:
    from .report import render_report

    return render_report(results, model, resolution)


def print_summary(task: str, info: dict) -> None:
    parts = []
    if "merges" in info:
        parts.append(f"{info['merges']} entity merges")
    if "triples_added" in info:
        parts.append(f"{info['triples_added']} triples added to the store")
    if "skipped" in info:
        parts.append(f"{info['skipped']} documents already stored, skipped")
    if parts:
        print(f"extract {task}: " + ", ".join(parts), file=sys.stderr)
