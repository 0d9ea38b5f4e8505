"""IE data -> instruction records (the engine behind ``convert_func.py``)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from .io import InputError, LabelError, atomic_writer, check_output, cli_errors, dumps, read_records
from .tasks import TASKS, Sampler, Schema, Task, get_task, read_schema


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert IE data into instruction records (JSONL).")
    p.add_argument("--src_path", default="data/NER/sample.json", help="raw data: JSON Lines or a JSON array")
    p.add_argument("--tgt_path", default="data/NER/processed.json", help="output JSONL (replaced when complete)")
    p.add_argument("--schema_path", default="data/NER/schema.json", help="3-line schema file")
    p.add_argument("--hard_negative_path", default=None, help="JSON object: label -> hard negative labels")
    p.add_argument("--cluster_mode", action="store_true", help="sample hard negatives (train only)")
    p.add_argument("--language", default="zh", choices=["zh", "en"], help="language of the instruction sentence")
    p.add_argument("--task", default="NER", choices=list(TASKS))
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--split_num", type=int, default=4,
                   help="most schema items per instruction, -1 for no split (NER 6, RE/EE/EET/EEA 4, KG 1)")
    p.add_argument("--neg_schema", type=float, default=1,
                   help="negative sampling ratio: 0 positives only, (0,1] Bernoulli ratio, <0 all negatives")
    p.add_argument("--random_sort", action="store_true", help="shuffle the schema order (train only)")
    p.add_argument("--seed", type=int, default=42, help="seed of --random_sort and 0<--neg_schema<1")
    p.add_argument("--source", default=None,
                   help="value of the 'source' field (default: the name of the folder holding --src_path)")
    return p


def source_name(src_path: str) -> str:
    """The folder holding the source file, as the original wrote it (``data/NER/sample.json`` -> ``NER``)."""
    parent = Path(src_path).parent
    return parent.name or Path(os.path.abspath(src_path)).parent.name


def load_hard_negatives(path: str | None, task: Task, schema: Schema) -> dict[str, list[str]]:
    if not path:
        raise InputError(None, None, "--cluster_mode needs --hard_negative_path")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as err:
        raise InputError(path, None, f"cannot read the hard-negative file: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, f"invalid JSON: {err.msg}") from None
    except UnicodeDecodeError:
        raise InputError(path, None, "not UTF-8") from None
    if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()):
        raise InputError(path, None, "expected a JSON object mapping each label to a list of labels")
    universe = set(task.universe(schema))
    if value and not universe & set(value):
        raise InputError(path, None, f"no key is a {task.name} label of the schema: wrong file for this task?")
    return value


class Converter:
    """Turns raw records into instruction record lines for one task, split and schema."""

    def __init__(self, task: Task, schema: Schema, split: str, split_num: int, language: str, source: str,
                 sampler: Sampler):
        self.task, self.schema, self.split, self.split_num = task, schema, split, split_num
        self.sampler, self.source = sampler, source
        self.sentence = task.instruction_sentence(language)
        head = dumps(task.name), dumps(source)
        self._train_head = '{"task": %s, "source": %s, "instruction": ' % head
        self._test_tail = ', "task": %s, "source": %s, "instruction": ' % head
        self._instr_head = '{"instruction": %s, "schema": ' % dumps(self.sentence)
        self._chunks: dict[Any, list[tuple[list, str]]] = {}
        self._texts: dict[bytes, int] = {}  # test split: how often each text (sha256 prefix) was seen
        self.repeated_texts = 0

    def record_id(self, text: str) -> str:
        """``sha256(text)`` as the original; the n-th repeat of a text gets ``-n`` appended so that eval,
        which merges the lines of one id, scores every source record on its own."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        key = bytes.fromhex(digest[:16])
        seen = self._texts.get(key, 0)
        self._texts[key] = seen + 1
        if not seen:
            return digest
        self.repeated_texts += 1
        return f"{digest}-{seen + 1}"

    def chunks(self, labels: list | None) -> list[tuple[list, str]]:
        """The schema chunks with their JSON text, memoised when they depend only on the label types."""
        task = self.task
        key = task.schema_key(labels, self.split)
        if key is not None and self.split == "train" and self.sampler.uses_rng:
            key = None
        if key is not None:
            hit = self._chunks.get(key)
            if hit is not None:
                return hit
        if self.split == "train":
            chunks = task.train_schemas(labels, self.schema, self.sampler, self.split_num)
        else:
            chunks = task.test_schemas(labels, self.schema, self.split_num)
        result = [(c, dumps(c)) for c in chunks]
        if key is not None:
            if len(self._chunks) > 10000:
                self._chunks.clear()
            self._chunks[key] = result
        return result

    def _instruction(self, schema_text: str, text_json: str) -> str:
        return dumps(self._instr_head + schema_text + ', "input": ' + text_json + "}")

    def record_lines(self, rec: dict) -> Iterator[str]:
        """The output lines for one raw record; LabelError on a malformed record."""
        text = rec.get("text")
        if not isinstance(text, str):
            raise LabelError("missing 'text'" if "text" not in rec else "'text' must be a string")
        task = self.task
        labels = rec.get(task.label_field)
        if labels is None and (self.split == "train" or task.label_field in rec):
            raise LabelError(f"missing '{task.label_field}'" if task.label_field not in rec
                             else f"'{task.label_field}' must be a list")
        if labels is not None:
            labels = task.check_labels(labels)
        text_json = dumps(text)
        if self.split == "train":
            for chunk, schema_text in self.chunks(labels):
                output = task.render_output(labels, chunk, text, self.schema)
                yield (self._train_head + self._instruction(schema_text, text_json)
                       + ', "output": ' + dumps(dumps(output)) + "}\n")
        else:
            head = '{"id": "' + self.record_id(text) + '"' + self._test_tail
            label = "" if labels is None else ', "label": ' + dumps(dumps(labels))
            for _, schema_text in self.chunks(labels):
                yield head + self._instruction(schema_text, text_json) + label + "}\n"


def convert(args: argparse.Namespace) -> dict[str, Any]:
    """Run one conversion; returns counts. Raises InputError on bad input (the target is then untouched)."""
    if args.split_num == 0 or args.split_num < -1:
        raise InputError(None, None, f"--split_num must be -1 (no split) or at least 1, got {args.split_num}")
    if args.neg_schema > 1 or args.neg_schema != args.neg_schema:
        raise InputError(None, None, f"--neg_schema must be at most 1, got {args.neg_schema}")
    inputs = {"--src_path": args.src_path, "--schema_path": args.schema_path,
              "--hard_negative_path": args.hard_negative_path if args.cluster_mode else None}
    check_output(args.tgt_path, "--tgt_path", inputs)
    task = get_task(args.task)
    schema = read_schema(args.schema_path)
    hard = load_hard_negatives(args.hard_negative_path, task, schema) if args.cluster_mode else None
    sampler = Sampler(args.neg_schema, args.random_sort and args.split == "train", args.seed, hard, args.split_num)
    source = args.source if args.source is not None else source_name(args.src_path)
    conv = Converter(task, schema, args.split, args.split_num, args.language, source, sampler)
    n_in = n_out = 0
    records = read_records(args.src_path)
    if sys.stderr.isatty():
        from tqdm import tqdm
        records = tqdm(records, desc=f"convert {task.name}", unit=" rec", mininterval=0.5)
    with atomic_writer(args.tgt_path) as out:
        write = out.write
        for line_no, rec in records:
            n_in += 1
            try:
                lines = list(conv.record_lines(rec))
            except LabelError as err:
                raise InputError(args.src_path, line_no, str(err)) from None
            n_out += len(lines)
            write("".join(lines))
    return {"task": task.name, "split": args.split, "records_in": n_in, "records_out": n_out,
            "path": str(args.tgt_path), "repeated_texts": conv.repeated_texts}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with cli_errors():
        stats = convert(args)
    print(f"{stats['task']} {stats['split']}: {stats['records_in']} records -> {stats['records_out']} "
          f"instructions in {stats['path']}", file=sys.stderr)
    if stats["repeated_texts"]:
        print(f"note: {stats['repeated_texts']} records repeat the text of an earlier record; their ids are "
              "sha256(text)-2, -3, ... so that eval scores each record on its own", file=sys.stderr)
    return 0
