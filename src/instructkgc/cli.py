"""InstructKGC command line: instructkgc <command> [options].

Commands: ``extract`` (text + schema in, knowledge graph out), ``query`` (SPARQL over an extract store).
``instructkgc <command> --help`` lists the options of each.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "extract": ("instructkgc.extract.command", "text + schema in, knowledge graph out (JSONL, Turtle, GraphML, "
                                               "Neo4j CSV, HTML report)"),
    "query": ("instructkgc.extract.query", "SPARQL over a store made by extract --store, or export it"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="instructkgc", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=list(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in
                                                                         COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    import importlib

    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
