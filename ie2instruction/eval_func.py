"""Score model answers: ``python ie2instruction/eval_func.py --path1 PRED.json --task NER``.

The result is printed (the original's Python ``repr``) and saved as JSON (``indent=4``) to
``<dir of path1>/output_msg/<basename of path1>`` unless ``--out_path`` is given. See the README (Evaluation).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ie2instruction.evaluation import Options, evaluate
from ie2instruction.io import atomic_writer, check_output, cli_errors, escape_surrogates
from ie2instruction.metrics import MATCH_MODES, MissingExtra, core

TASKS = ("NER", "RE", "EE", "SPO", "EET", "EEA", "KG")
METRICS = ("f1", "rouge")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_func", description=__doc__.split("\n")[0])
    p.add_argument("--path1", required=True, help="prediction file (JSONL or a JSON array) with an 'output' per record")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="task; default: the 'task' field of the records (all must agree)")
    p.add_argument("--language", default="zh", help="accepted for compatibility; scoring does not depend on it")
    p.add_argument("--NAN", default="", help="accepted for compatibility, ignored (as in the original)")
    p.add_argument("--prefix", default="", help="accepted for compatibility, ignored (as in the original)")
    p.add_argument("--sort_by", default="", help="also score per value of this record field: source (or input)")
    p.add_argument("--match_mode", default="normal", choices=MATCH_MODES,
                   help="normal: multiset matching; set: duplicates removed on both sides first")
    p.add_argument("--metrics_list", default="f1", help="comma-separated: f1[,rouge] (rouge needs the 'rouge' extra)")
    p.add_argument("--out_path", default=None, help="where to save the JSON result "
                   "(default <dir of path1>/output_msg/<basename of path1>)")
    p.add_argument("--repair", action="store_true",
                   help="recover answers that are not valid JSON (code fences, prose, truncation, single quotes) "
                        "and report how many needed it; default is the original's strict json.loads")
    p.add_argument("--plot", default=None, metavar="PATH.png", help="draw the per-label scores (needs matplotlib)")
    return p


def default_out_path(path1: str) -> str:
    return os.path.join(os.path.dirname(path1), "output_msg", os.path.basename(path1))


def _metrics(value: str, parser: argparse.ArgumentParser) -> set[str]:
    names = {m.strip() for m in value.split(",") if m.strip()}
    unknown = names - set(METRICS)
    if unknown or not names:
        parser.error(f"--metrics_list: unknown metric(s) {', '.join(sorted(unknown)) or '(none)'}; "
                     f"choose from {', '.join(METRICS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    metrics = _metrics(args.metrics_list, parser)
    opts = Options(task=args.task, match_mode=args.match_mode, sort_by=args.sort_by, repair=args.repair,
                   rouge="rouge" in metrics)
    out_path = args.out_path or default_out_path(args.path1)
    with cli_errors():
        check_output(out_path, "--out_path", {"--path1": args.path1})
        if args.plot:
            check_output(args.plot, "--plot", {"--path1": args.path1, "--out_path": out_path})
        try:
            if args.plot:
                from ie2instruction.plot import require_matplotlib
                require_matplotlib()
            task, result = evaluate(args.path1, opts)
        except MissingExtra as err:
            print(str(err), file=sys.stderr)
            return 2
        with atomic_writer(out_path) as f:
            f.write(escape_surrogates(json.dumps(result, indent=4, ensure_ascii=False)))
        print(core(result))
        print(f"result saved to {out_path}", file=sys.stderr)
        if args.plot:
            from ie2instruction.plot import plot_result
            plot_result(result, args.plot, title=f"{task.name}: {os.path.basename(args.path1)}")
            print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
