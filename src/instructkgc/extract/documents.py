"""Read the documents to extract from and the schema to extract with.

Input (``--input``): a text file with one document per line (blank lines skipped), a JSONL file (or one JSON
array) of objects with a ``text`` field whose other fields are kept, a Parquet file with a ``text`` column
(every row a document, its other columns kept), or ``-`` for stdin. ``auto`` picks Parquet for ``.parquet`` /
``.pq`` files and for input framed by Parquet's magic bytes, JSON for ``.json`` / ``.jsonl`` files and for
input whose first line is a JSON object, text otherwise. JSON and Parquet records are read by
``ie2instruction.io.read_records``, the reader of every command. A document without an ``id`` gets the number
of its input line (Parquet: its row number) as its id.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ie2instruction.io import PARQUET_MAGIC, TOO_DEEP, InputError, LabelError, is_parquet, read_records, text_problem
from ie2instruction.tasks import Schema, Task, read_schema

STDIN = "<stdin>"


@dataclass
class Document:
    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)  # the input record (JSON input), id and text included


def _first_line(raw: bytes) -> bytes:
    for line in raw.splitlines():
        if line.strip():
            return line.lstrip(b"\xef\xbb\xbf").strip()
    return b""


def _looks_json(first: bytes) -> bool:
    if first.startswith(b"["):
        return True
    if not first.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def _text_documents(raw: bytes, shown: str) -> list[Document]:
    docs = []
    for no, line in enumerate(raw.split(b"\n"), 1):
        if no == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise InputError(shown, no, f"not UTF-8 (byte {err.start + 1} of the line)") from None
        if text.strip():
            docs.append(Document(str(no), text))
    return docs


def _record_documents(path: str, shown: str) -> list[Document]:
    docs = []
    try:
        for no, rec in read_records(path):
            text = rec.get("text")
            if not isinstance(text, str):
                raise InputError(shown, no, "missing 'text'" if "text" not in rec else "'text' must be a string")
            doc_id = rec.get("id", str(no))
            if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
                raise InputError(shown, no, "'id' must be a string or an integer")
            docs.append(Document(str(doc_id), text, rec))
    except InputError as err:
        if err.path is not None and str(err.path) != shown:
            err.path = shown
        raise
    return docs


def _framed_parquet(path: str) -> bool:
    """Parquet's magic bytes at both ends of the file (a text file may start with them, not also end)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(PARQUET_MAGIC))
            f.seek(0, os.SEEK_END)
            if f.tell() < 2 * len(PARQUET_MAGIC):
                return False
            f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
            return head == PARQUET_MAGIC and f.read() == PARQUET_MAGIC
    except OSError:
        return False


def read_documents(path: str, input_format: str = "auto") -> list[Document]:
    """All documents of ``path`` (``-``: stdin). Raises InputError: unreadable, not UTF-8, not Parquet, no
    documents, a record without a string ``text``, duplicate ids."""
    shown = STDIN if path == "-" else path
    if path == "-":
        raw = sys.stdin.buffer.read()
    elif input_format == "parquet" or (input_format == "auto" and (is_parquet(path, b"")
                                                                    or _framed_parquet(path))):
        raw = None  # read by pyarrow, not into memory here
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise InputError(path, None, f"cannot read the input: {err.strerror}") from None
    fmt = input_format
    if fmt == "auto":
        suffix = Path(path).suffix.lower() if path != "-" else ""
        if raw is None or (raw.startswith(PARQUET_MAGIC) and raw.endswith(PARQUET_MAGIC)):
            fmt = "parquet"
        else:
            fmt = "jsonl" if suffix in (".json", ".jsonl") or _looks_json(_first_line(raw)) else "text"
    if fmt == "text":
        docs = _text_documents(raw, shown)
    elif path == "-":
        with tempfile.TemporaryDirectory() as tmp:
            name = os.path.join(tmp, "stdin.parquet" if fmt == "parquet" else "stdin.jsonl")
            Path(name).write_bytes(raw)
            docs = _record_documents(name, shown)
    else:
        docs = _record_documents(path, shown)
    if not docs:
        raise InputError(shown, None, "no documents: the input is empty")
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise InputError(shown, None, f"duplicate document id {doc.id!r}")
        seen.add(doc.id)
    return docs


def load_schema(task: Task, value: str) -> Schema:
    """``--schema``: a schema file as convert_func reads it, or inline JSON (a list of labels; for EE, EEA and
    KG an object type -> roles / attributes). Raises InputError when it is unusable for ``task``."""
    text = value.strip()
    if os.path.exists(value):
        where = value
        schema = read_schema(value)
    elif text[:1] in ("[", "{"):
        where = "--schema"
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(where, None, f"invalid JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise InputError(where, None, TOO_DEEP) from None
        problem = text_problem(parsed, text)
        if problem:
            raise InputError(where, None, problem)
        try:
            schema = task.schema_from_json(parsed)
        except LabelError as err:
            raise InputError(where, None, str(err)) from None
    else:
        raise InputError(value, None, "no such schema file (or give the schema inline as JSON)")
    if not any(task.test_schemas(None, schema, -1)[0]):
        raise InputError(where, None, f"the schema has nothing for task {task.name} to extract (a schema file "
                         "has entity/event types or SPO strings on line 1, relations on line 2, and "
                         "type -> roles / attributes on line 3)")
    return schema
