"""Score a prediction file: read records, merge split records by ``source + id``, parse answers, count; and
the command line ``python ie2instruction/eval_func.py --path1 PRED.json --task NER``.

The result is printed (the original's Python ``repr``) and saved as JSON (``indent=4``) to
``<dir of path1>/output_msg/<basename of path1>`` unless ``--out_path`` is given (README: Evaluation).

Input problems raise :class:`~ie2instruction.io.InputError` (``PATH:LINE: problem``); model answers that
cannot be read are counted as errors and reported through ``warn``, never raised.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .answers import INVALID, load_answer
from .io import (InputError, LabelError, atomic_writer, check_output, cli_errors, escape_surrogates, fast_loads,
                 one_line, read_records)
from .metrics import MATCH_MODES, MissingExtra, Rouge, Scorer, core
from .tasks import TASKS, get_task

MAX_WARNINGS = 5


@dataclass
class Options:
    task: str | None = None  # None: take it from the records' ``task`` field
    match_mode: str = "normal"
    sort_by: str = ""
    repair: bool = False
    rouge: bool = False


@dataclass
class Instance:
    """One merged input text: gold from its first line, predictions pooled from all its lines."""
    line: int
    category: str | None
    gold: list
    preds: list = field(default_factory=list)
    errors: int = 0
    repaired: int = 0


class Warnings:
    """Prints the first few answer problems on stderr, then only counts them."""

    def __init__(self, path, stream=None, limit: int = MAX_WARNINGS):
        self.path, self.stream, self.limit, self.count = path, stream or sys.stderr, limit, 0

    def __call__(self, line: int, message: str, text: Any = None) -> None:
        self.count += 1
        if self.count <= self.limit:
            shown = "" if text is None else ": " + _clip(text)
            print(f"{self.path}:{line}: {message}{shown}", file=self.stream)

    def close(self) -> None:
        if self.count > self.limit:
            print(f"{self.path}: ... {self.count - self.limit} more answer problems not shown "
                  f"({self.count} in all, counted in 错误数)", file=self.stream)


def _clip(text: Any, n: int = 80) -> str:
    s = one_line(text if isinstance(text, str) else repr(text))  # a warning stays one line
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def _string_field(rec: dict, name: str, path, line: int) -> str:
    value = rec.get(name)
    if value is None:
        raise InputError(path, line, f"missing '{name}'")
    if type(value) is not str:
        raise InputError(path, line, f"'{name}' must be a string, got {type(value).__name__}")
    return value


def _json_field(rec: dict, name: str, path, line: int) -> Any:
    text = _string_field(rec, name, path, line)
    try:
        return fast_loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(path, line, f"'{name}' is not a JSON string ({err.__class__.__name__}: "
                                     f"{str(err)[:60]})") from None


def _instruction(rec: dict, path, line: int, required: bool) -> dict | None:
    if not required and "instruction" not in rec:
        return None
    obj = _json_field(rec, "instruction", path, line)
    if type(obj) is not dict:
        raise InputError(path, line, f"'instruction' must hold a JSON object, got {type(obj).__name__}")
    return obj


def _category(rec: dict, instruction: dict | None, sort_by: str, path, line: int) -> str | None:
    if not sort_by:
        return None
    if sort_by == "input":
        value = (instruction or {}).get("input")
    else:
        value = rec.get(sort_by)
    if value is None:
        return "None"  # the original's str(None) for a record without the field
    if type(value) is not str:
        raise InputError(path, line, f"--sort_by {sort_by}: the value must be a string, got {type(value).__name__}")
    return value


def _resolve_task(rec: dict, path, line: int, seen: dict):
    name = rec.get("task")
    if type(name) is not str or not name:
        raise InputError(path, line, "no --task given and the record has no 'task' field to take it from")
    if "name" not in seen:
        try:
            seen["task"] = get_task(name)
        except (KeyError, ValueError):
            raise InputError(path, line, f"unknown task {name!r} in the 'task' field") from None
        seen["name"], seen["line"] = name, line
    elif name != seen["name"]:
        raise InputError(path, line, f"records name different tasks ({seen['name']!r} at line {seen['line']}, "
                                     f"{name!r} here); pass --task")
    return seen["task"]


@dataclass
class Integrity:
    """Lines that the original merged silently; each is scored correctly and counted (reported on stderr)."""

    duplicates: int = 0  # a line repeating an earlier one (same id and instruction): skipped
    shared_ids: int = 0  # texts sharing the id of another text: scored as instances of their own
    relabelled: int = 0  # the same id and text with another label: scored as instances of their own

    def notes(self) -> list[str]:
        out = []
        if self.duplicates:
            out.append(f"{self.duplicates} lines repeat an earlier line (same id and instruction): skipped, the "
                       "first answer of each is scored")
        if self.shared_ids:
            out.append(f"{self.shared_ids} texts share the id of another text: each is scored as its own instance")
        if self.relabelled:
            out.append(f"{self.relabelled} records repeat the id and text of another with a different label: each "
                       "is scored as its own instance")
        return out


def _check_task(rec: dict, task, path, line: int) -> None:
    """``--task`` must not contradict the record's own ``task`` field."""
    name = rec.get("task")
    if type(name) is str and name.upper() != task.name and name.upper() in TASKS:
        raise InputError(path, line, f"--task {task.name} but the record's task is {name!r}; pass the right "
                                     "--task (or none, to take it from the records)")


def _gold(task, labels, path, line: int) -> list:
    if not isinstance(labels, list):
        raise InputError(path, line, f"'label' must hold a JSON list of {task.name} labels, got "
                                     f"{type(labels).__name__}")
    for i, item in enumerate(labels):
        problem = task.label_problem(item)
        if problem:
            raise InputError(path, line, f"'label'[{i}]: {problem} (not {task.name} gold: wrong --task?)")
    try:
        return task.gold(labels)
    except LabelError as err:
        raise InputError(path, line, f"'label': {err}") from None
    except (KeyError, TypeError, AttributeError, IndexError):
        raise InputError(path, line, f"'label' does not have the shape of {task.name} labels") from None


def collect(path: str | os.PathLike, opts: Options, warn: Callable[[int, str, Any], None],
            integrity: Integrity | None = None):
    """Read ``path`` and return ``(task, instances)``; raises InputError for a bad file.

    Lines are merged into instances by ``source + id`` as the original did, except that a line whose text
    (``instruction.input``) or ``label`` differs from the first line of its id starts an instance of its own,
    and an exact repeat of an earlier line (same id and instruction) is skipped; ``integrity`` counts both.
    """
    task = get_task(opts.task) if opts.task else None
    integrity = integrity if integrity is not None else Integrity()
    seen: dict = {}
    uses_schema = None
    instances: dict[tuple, Instance] = {}
    first: dict[tuple[str, str], tuple] = {}  # (source, id) -> (text, label) of its first line
    lines: set[int] = set()  # hashes of (instance, instruction) of the lines read: repeats are skipped
    repair = opts.repair
    for line, rec in read_records(path, fast=True, strict_text=False):  # only string fields are read
        if opts.task is None:
            task = _resolve_task(rec, path, line, seen)
        else:
            _check_task(rec, task, path, line)
        if uses_schema is None:
            uses_schema = getattr(task, "parse_uses_schema", True)  # unknown: decode to be safe
        output = _string_field(rec, "output", path, line)
        rid = _string_field(rec, "id", path, line)
        source = rec.get("source")
        if source is None:
            source = "None"  # the original's missing-source key
        elif type(source) is not str:
            raise InputError(path, line, f"'source' must be a string, got {type(source).__name__}")
        base = (source, rid)
        ident = first.get(base)
        instruction = _instruction(rec, path, line, required=ident is None)
        text = instruction.get("input") if instruction else None
        label = _string_field(rec, "label", path, line) if "label" in rec else None
        if ident is None:
            key = base
            first[base] = ident = (text, label)
        elif (text is None or text == ident[0]) and (label is None or label == ident[1]):
            key = base
        else:
            key = (source, rid, text, label)
            if key not in instances:
                if text is None or text == ident[0]:
                    integrity.relabelled += 1
                else:
                    integrity.shared_ids += 1
        inst = instances.get(key)
        if inst is None:
            gold = _gold(task, _json_field(rec, "label", path, line), path, line)
            inst = instances[key] = Instance(line, _category(rec, instruction, opts.sort_by, path, line), gold)
        fingerprint = hash((key, rec.get("instruction")))
        if fingerprint in lines:
            integrity.duplicates += 1
            continue
        lines.add(fingerprint)
        value, repaired = load_answer(output, repair)
        if repaired:
            inst.repaired += 1
        if value is INVALID:
            inst.errors += 1
            warn(line, "answer is not valid JSON" + (" (not repairable)" if repair else ""), output)
            continue
        schema = instruction.get("schema") if uses_schema and instruction else None
        try:
            tuples = task.parse(value, schema) if uses_schema else task.parse(value)
        except Exception as err:  # a parser bug must not lose the whole evaluation
            tuples = None
            warn(line, f"answer could not be parsed ({err.__class__.__name__})", output)
        else:
            if tuples is None:
                warn(line, f"answer is a JSON {type(value).__name__}, expected an object", output)
        if tuples is None:
            inst.errors += 1
        else:
            inst.preds.extend(tuples)
    if task is None:
        raise InputError(path, None, "no records" + ("" if opts.task else ", and no --task given"))
    return task, instances


def evaluate(path: str | os.PathLike, opts: Options, warn: Callable[[int, str, Any], None] | None = None):
    """Score one prediction file; returns ``(task, result)`` with the result object described in the README (Evaluation)."""
    rouge = Rouge() if opts.rouge else None  # fails early when the extra is missing
    warn = warn or Warnings(path)
    gc_was_on = gc.isenabled()
    gc.disable()  # only acyclic containers are built; generation-2 passes over them cost as much as the parsing
    integrity = Integrity()
    try:
        task, instances = collect(path, opts, warn, integrity)
    finally:
        if gc_was_on:
            gc.enable()
    for note in integrity.notes():
        print(f"{path}: note: {note}", file=sys.stderr)
    scorer = Scorer(task.metric, task.label_of, opts.match_mode, opts.repair)
    for inst in instances.values():
        scorer.add(inst.gold, inst.preds, inst.errors, inst.repaired, inst.category)
        if rouge is not None:
            scorer.add_rouge(rouge.score(inst.preds, inst.gold), inst.category)
    if isinstance(warn, Warnings):
        warn.close()
    return task, scorer.result(with_rouge=rouge is not None)


# ---- command line (ie2instruction/eval_func.py) ----

METRICS = ("f1", "rouge")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_func", description="Score model answers (README: Evaluation).")
    p.add_argument("--path1", required=True, help="prediction file (JSONL or a JSON array) with an 'output' per record")
    p.add_argument("--task", choices=tuple(TASKS), default=None,
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
                from .plot import require_matplotlib
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
            from .plot import plot_result
            plot_result(result, args.plot, title=f"{task.name}: {os.path.basename(args.path1)}")
            print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0
