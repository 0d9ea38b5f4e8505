"""Instruction records in, the same records with ``output`` out, in input order; resumable with ``--resume``.

The input is read twice, streaming: once to check every record (bad input fails before anything is
written) and once to generate. Records are generated in windows of a few batches (sorted by length inside
the engine) and each window is written in input order as complete JSON lines. A fresh run writes them to a
temporary file that replaces the output only when every record is answered. With ``--resume`` each window is
appended to the output itself, flushed and synced: a run killed at any point leaves a prefix of the answers
and at most one torn last line, which the next ``--resume`` verifies, drops and redoes, so the final file holds
exactly one answer per input record. ``--resume`` refuses a file that is not such a prefix, untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ie2instruction.io import InputError, atomic_writer, check_output, dumps, read_records


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
    """Validate every record of ``path`` (JSON array or JSONL); return how many there are (at least one)."""
    n = 0
    for line, record in read_records(path):
        if not isinstance(record.get("instruction"), str) or not record["instruction"]:
            raise InputError(path, line, "record has no 'instruction' string")
        for name in ("input", "system"):
            if record.get(name) is not None and not isinstance(record[name], str):
                raise InputError(path, line, f"'{name}' must be a string, got {type(record[name]).__name__}")
        n += 1
    if not n:
        raise InputError(path, None, "no records: the input is empty")
    return n


def check_files(input_file, output_file, resume: bool, input_flag: str = "--input_file",
                output_flag: str = "--output_file") -> int:
    """Everything about the files that can fail, checked before a model loads: the output is not an input and
    can be written, every input record is valid, and with ``resume`` the output is this input's unfinished
    answers. Returns the number of records."""
    check_output(output_file, output_flag, {input_flag: input_file})
    n = check_input(input_file)
    if resume:
        resume_point(output_file, input_file)
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
    """How many answers ``output_file`` already holds for ``input_file``, verified line by line.

    Every complete line must be the answer to the input record of the same rank (the record plus its
    ``output``); a last line without its newline (a run killed in mid-write) must be the start of the next
    answer, and is cut off. Anything else raises InputError and leaves the file untouched.
    """
    out = Path(output_file)
    if not out.exists():
        return 0
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    records = read_records(input_file)
    refuse = f"--resume: {out} is not an unfinished output of {input_file}; use another --output_file or " \
             "run without --resume"
    for k, raw in enumerate(lines, 1):
        item = next(records, None)
        if item is None:
            raise InputError(out, k, f"--resume: more answers than records in {input_file}")
        line, record = item
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(out, k, refuse + " (not a JSON line)") from None
        if not (isinstance(answer, dict) and isinstance(answer.get("output"), str)
                and _without_output(answer) == _without_output(record)):
            raise InputError(out, k, f"--resume: this line is not the answer to {input_file}:{line}; "
                                     "use another --output_file or run without --resume")
    if end < len(data):
        item = next(records, None)
        if item is None or not _answer_start(item[1]).startswith(data[end:]):
            raise InputError(out, len(lines) + 1, refuse + " (its last line is not the start of an answer)")
        with open(out, "r+b") as f:  # verified: a torn answer, generated again
            f.truncate(end)
    return len(lines)


def _without_output(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "output"}


def _answer_start(record: dict) -> bytes:
    """The bytes an answer line to ``record`` starts with, up to its ``output`` value."""
    marker = "\x00output\x00"
    return (dumps({**record, "output": marker}).split(dumps(marker))[0]).encode("utf-8")


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


@contextlib.contextmanager
def _output(out: Path, resume: bool):
    """``--resume``: append to the (verified) file, each window synced, so a killed run can continue. A fresh
    run writes a temporary file renamed over ``out`` at the end: an existing output survives any failure."""
    if not resume:
        with atomic_writer(out) as f:
            yield f
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8", newline="\n") as f:
        yield f


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
    counts.skipped = resume_point(out, input_file) if resume else 0
    progress = _Progress(counts.records, counts.skipped)
    try:
        with _output(out, resume) as f:
            for batch in _windows(input_file, counts.skipped, window):
                lines = answer_batch(engine, make_prompt, batch, input_file, constrained, counts, progress,
                                     grounded)
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
    finally:
        progress.close()
    return counts


def answer_batch(engine, make_prompt: Callable[[dict], tuple[list[int], bool]], batch: list[tuple[int, dict]],
                 input_file, constrained: bool, counts: Counts, progress=None, grounded: bool = False) -> list[str]:
    """The output lines of ``batch`` (``(line, record)`` pairs of ``input_file``), in its order; ``counts``
    gets what was generated. ``grounded``: see :func:`predict_file`."""
    prompts = []
    for _, record in batch:
        ids, cut = make_prompt(record)
        prompts.append(ids)
        counts.truncated_prompts += bool(cut)
    schemas = [answer_schema(r, input_file, line, grounded) for line, r in batch] if constrained else None
    gens = engine.generate(prompts, schemas, progress=progress)
    return [answer_line(record, gen, counts) for (_, record), gen in zip(batch, gens)]


def answer_line(record: dict, gen, counts: Counts) -> str:
    """The output line of ``record`` answered by ``gen`` (a ``Generation``); ``counts`` gets what it cost."""
    try:
        json.loads(gen.text)
    except ValueError:
        counts.invalid_json += 1
    counts.cut_off += not gen.finished
    counts.new_tokens += gen.num_tokens
    counts.generated += 1
    record = dict(record)
    record["output"] = gen.text  # replaced in place when present: key order kept
    return dumps(record) + "\n"
