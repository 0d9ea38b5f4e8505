"""Instruction records in, the same records with ``output`` out: appended in input order, resumable.

The input is read twice, streaming: once to check every record (bad input fails before anything is
written) and once to generate. Records are generated in windows of a few batches (sorted by length inside
the engine) and each window is appended in input order as complete JSON lines, flushed and synced. A run
killed at any point therefore leaves a prefix of the answers, at most one torn last line, which ``--resume``
drops and redoes, so the final file holds exactly one answer per input record.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ie2instruction.io import InputError, dumps, read_records


@dataclass
class Counts:
    """What a run did; reported at the end."""

    records: int = 0
    skipped: int = 0  # already answered (--resume)
    generated: int = 0
    truncated_prompts: int = 0  # longer than cutoff_len, cut
    cut_off: int = 0  # stopped by max_new_tokens before a stop token
    invalid_json: int = 0
    new_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def check_input(path) -> int:
    """Validate every record of ``path`` (JSON array or JSONL); return how many there are."""
    n = 0
    for line, record in read_records(path):
        if not isinstance(record.get("instruction"), str) or not record["instruction"]:
            raise InputError(path, line, "record has no 'instruction' string")
        n += 1
    return n


def answer_schema(record: dict, path=None, line: Optional[int] = None, grounded: bool = False) -> dict:
    """JSON Schema of the expected answer of one converted record (its ``task`` and schema chunk); with
    ``grounded``, carrying the record's input text so that extractive strings must be spans of it."""
    from ie2instruction.tasks import get_task

    try:
        instruction = json.loads(record["instruction"])
        chunk = instruction["schema"]
    except (ValueError, KeyError, TypeError):
        raise InputError(path, line, "--constrained_decoding: 'instruction' is not a JSON object with a "
                                     "'schema'") from None
    try:
        task = get_task(record.get("task") or "")
    except (ValueError, KeyError):
        raise InputError(path, line, f"--constrained_decoding: unknown or missing 'task' "
                                     f"{record.get('task')!r}") from None
    try:
        schema = task.answer_schema(chunk)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, line, f"--constrained_decoding: schema does not fit task {task.name}: "
                                     f"{err}") from None
    from .grammar import SPAN_TEXT, has_spans

    if grounded and has_spans(schema):  # (KG has none: its grammar stays one per schema, not per record)
        if not isinstance(instruction.get("input"), str):
            raise InputError(path, line, "--grounded_decoding: 'instruction' has no 'input' string")
        schema[SPAN_TEXT] = instruction["input"]
    return schema


def resume_point(output_file, input_file) -> int:
    """Answers already in ``output_file`` (a torn last line is cut off), checked against the input."""
    out = Path(output_file)
    if not out.is_file():
        return 0
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    good = 0
    offset = 0
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            break
        if not isinstance(rec, dict) or "output" not in rec:
            break
        good += 1
        offset += len(raw) + 1
    if offset < len(data):  # a torn or damaged tail: drop it, it is generated again
        with open(out, "r+b") as f:
            f.truncate(offset)
    if good:
        _check_alignment(out, input_file, good)
    return good


def _check_alignment(out: Path, input_file, n: int) -> None:
    """The first ``n`` answers must belong to the first ``n`` input records (same instruction)."""
    with open(out, "rb") as f:
        answers = (json.loads(raw) for raw in f)
        for k, ((line, record), answer) in enumerate(zip(read_records(input_file), answers), 1):
            if answer.get("instruction") != record.get("instruction"):
                raise InputError(out, k, f"--resume: this answer is not for {input_file}:{line} (different "
                                         "instruction); use another --output_file or run without --resume")
            if k == n:
                return
    raise InputError(out, n, f"--resume: more answers than records in {input_file}")


def _windows(path, skip: int, size: int) -> Iterator[list[tuple[int, dict]]]:
    window: list[tuple[int, dict]] = []
    for k, item in enumerate(read_records(path)):
        if k < skip:
            continue
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


class _Progress:
    """tqdm bar with records/s and new tokens/s, only on a terminal."""

    def __init__(self, total: int, initial: int):
        self.bar = None
        self.tokens, self.start = 0, time.perf_counter()
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="rec", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, records: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(records)
            self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.1f} tok/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def predict_file(engine, make_prompt: Callable[[dict], tuple[list[int], bool]], input_file, output_file,
                 resume: bool = False, constrained: bool = False, window: int = 256,
                 grounded: bool = False) -> Counts:
    """Answer every record of ``input_file`` into ``output_file`` with ``engine``.

    ``make_prompt(record) -> (ids, truncated)`` tokenises one record (the template's prompt). ``grounded``
    (with ``constrained``): extractive strings can only be spans of each record's input.
    """
    counts = Counts(records=check_input(input_file))
    if constrained:  # every schema must be buildable before anything is written
        for line, record in read_records(input_file):
            answer_schema(record, input_file, line, grounded)
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts.skipped = resume_point(out, input_file) if resume else 0
    progress = _Progress(counts.records, counts.skipped)
    try:
        with open(out, "a" if resume else "w", encoding="utf-8", newline="\n") as f:
            for batch in _windows(input_file, counts.skipped, window):
                prompts = []
                for _, record in batch:
                    ids, cut = make_prompt(record)
                    prompts.append(ids)
                    counts.truncated_prompts += bool(cut)
                schemas = ([answer_schema(r, input_file, line, grounded) for line, r in batch] if constrained
                           else None)
                gens = engine.generate(prompts, schemas, progress=progress)
                lines = []
                for (_, record), gen in zip(batch, gens):
                    try:
                        json.loads(gen.text)
                    except ValueError:
                        counts.invalid_json += 1
                    counts.cut_off += not gen.finished
                    counts.new_tokens += gen.num_tokens
                    record = dict(record)
                    record["output"] = gen.text  # replaced in place when present: key order kept
                    lines.append(dumps(record) + "\n")
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
                counts.generated += len(batch)
    finally:
        progress.close()
    return counts
