"""Instruction records in, records with ``output`` out (JSONL, appended per chunk, resumable)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..utils import UsageError

CHUNK = 64  # records generated between two writes to the output file


def read_test_records(path) -> list[tuple[int, dict]]:
    """All records of ``path`` (checked before anything is written)."""
    from ie2instruction.io import InputError, read_records

    records = list(read_records(path))
    for line, record in records:
        if not isinstance(record.get("instruction"), str) or not record["instruction"]:
            raise InputError(path, line, "record has no 'instruction' string")
    return records


def _answer_schema(record: dict):
    """The JSON Schema of the expected answer (None when the record's task or schema is unknown)."""
    from ie2instruction.tasks import get_task

    try:
        chunk = json.loads(record["instruction"])["schema"]
        return get_task(record.get("task", "")).answer_schema(chunk)
    except (ValueError, KeyError, TypeError, NotImplementedError):
        return None


def _done_count(path: Path) -> int:
    """Complete lines already in ``path``; a trailing partial line (interrupted write) is cut off."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return sum(1 for line in data[:end].splitlines() if line.strip())


def predict_records(engine, template, tokenizer, records: list[tuple[int, dict]], output_file, cutoff_len: int,
                    resume: bool = False, constrained: bool = False, batch_size: int = 16) -> dict:
    """Generate ``output`` for ``records`` (from :func:`read_test_records`) into ``output_file``; returns counts."""
    from ie2instruction.io import dumps

    from ..template import build_prompt_ids

    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_count(out) if resume else 0
    if done > len(records):
        raise UsageError(f"--resume: {output_file} holds {done} records, more than the {len(records)} input "
                         "records (a different test file?)")
    counts = {"records": len(records), "skipped": done, "generated": 0, "truncated_prompts": 0,
              "cut_off": 0, "invalid_json": 0}
    chunk = max(CHUNK, batch_size)
    with open(out, "a" if resume else "w", encoding="utf-8") as f:
        for start in range(done, len(records), chunk):
            batch = [r for _, r in records[start:start + chunk]]
            prompts = []
            for record in batch:
                ids, cut = build_prompt_ids(template, tokenizer, record, cutoff_len)
                prompts.append(ids)
                counts["truncated_prompts"] += cut
            schemas = [_answer_schema(r) for r in batch] if constrained else None
            for record, gen in zip(batch, engine.generate(prompts, schemas)):
                try:
                    json.loads(gen.text)
                except ValueError:
                    counts["invalid_json"] += 1
                counts["cut_off"] += not gen.finished
                f.write(dumps(dict(record, output=gen.text)) + "\n")
            f.flush()
            os.fsync(f.fileno())
            counts["generated"] += len(batch)
    return counts
